//! Event rules: condition expressions ([`expr`]), the per-subject state machines
//! ([`state`]) and the rule files of `config/rules/` ([`file`]).
//!
//! Everything here is pure: the dataflow's `DetectEvents` operator feeds readings in event-time
//! order and turns transitions into lifecycle messages.

pub mod engine;
pub mod expr;
pub mod file;
pub mod state;

pub use engine::Detector;
pub use expr::{ArithOp, CmpOp, Expr, ParseError};
pub use file::{load_rules, parse_rules, Input, Rule, RuleKind, SequenceSteps};
pub use state::{
    incident_id, rate, Baseline, Sequence, Threshold, Transition, RATE_SUFFIX, Z_SUFFIX,
};
