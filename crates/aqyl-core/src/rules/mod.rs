//! Event rules: condition expressions ([`expr`]), the per-subject state machines
//! ([`state`]), the rule files of `config/rules/` ([`file`]), the engine of one worker
//! ([`engine`]), the incident lifecycle messages they give out ([`event`]), and the
//! confirmation of incidents by reports near them ([`corroborate`]).
//!
//! Everything here is pure: the dataflow's `DetectEvents` operator feeds readings in event-time
//! order and turns transitions into lifecycle messages.
//!
//! [`Event`](event::Event) lives here, with the rules that define incidents (their ids come from
//! [`incident_id`]); quality scoring raises its `quality` incidents with the same type.

pub mod corroborate;
pub mod engine;
pub mod event;
pub mod expr;
pub mod file;
pub mod state;

pub use engine::Detector;
pub use expr::{ArithOp, CmpOp, Expr, ParseError};
pub use file::{load_rules, parse_rules, Input, Rule, RuleKind, SequenceSteps};
pub use state::{
    incident_id, rate, Baseline, Sequence, Threshold, Transition, RATE_SUFFIX, Z_SUFFIX,
};
