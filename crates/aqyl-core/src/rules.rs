//! Event-rule cores: condition expressions over a reading's fields, and the threshold state
//! machine with hysteresis and `for` durations in event time.
//!
//! Expressions are small and declarative, as rule files write them:
//! `avgSpeed <= 35 and vehicleCount >= 10`, `vehiclecount / totalspaces >= 0.9`,
//! `(a > 1 or b > 2) and not c == 0`. Numbers, field names, `+ - * /`, comparisons
//! `< <= > >= == !=`, `and`, `or`, `not` and parentheses. A comparison over a field that the
//! reading lacks is false (and so its negation true), so a missing value never starts an event.

use std::fmt;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number.
    Number(f64),
    /// A field of the reading.
    Field(String),
    /// Arithmetic.
    Arith(Box<Expr>, ArithOp, Box<Expr>),
    /// A comparison.
    Compare(Box<Expr>, CmpOp, Box<Expr>),
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Negation.
    Not(Box<Expr>),
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A parse error with the byte offset in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset where it went wrong.
    pub at: usize,
    /// What was expected.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at + 1, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // `i` is always on a character boundary: every branch advances by whole characters.
        let Some(c) = src[i..].chars().next() else {
            break;
        };
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == '.' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit()))
        {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let text = &src[start..i];
            let n = text.parse::<f64>().map_err(|_| ParseError {
                at: start,
                message: format!("{text:?} is not a number"),
            })?;
            out.push((start, Tok::Num(n)));
        } else if c.is_alphabetic() || c == '_' {
            while i < src.len() {
                let ch = src[i..].chars().next().unwrap_or(' ');
                if ch.is_alphanumeric() || ch == '_' {
                    i += ch.len_utf8();
                } else {
                    break;
                }
            }
            out.push((start, Tok::Ident(src[start..i].to_string())));
        } else {
            let two = src.get(i..i + 2).unwrap_or("");
            let double = match two {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "==" => Some("=="),
                "!=" => Some("!="),
                "&&" => Some("and"),
                "||" => Some("or"),
                _ => None,
            };
            let op: &'static str = match double {
                Some(op) => op,
                None => match c {
                    '<' => "<",
                    '>' => ">",
                    '+' => "+",
                    '-' => "-",
                    '*' => "*",
                    '/' => "/",
                    '!' => "not",
                    '(' => {
                        out.push((i, Tok::LParen));
                        i += 1;
                        continue;
                    }
                    ')' => {
                        out.push((i, Tok::RParen));
                        i += 1;
                        continue;
                    }
                    _ => {
                        return Err(ParseError {
                            at: i,
                            message: format!("unexpected character {c:?}"),
                        })
                    }
                },
            };
            i += if double.is_some() { 2 } else { 1 };
            out.push((start, Tok::Op(op)));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |t| t.0)
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(w))
            || matches!(self.peek(), Some(Tok::Op(o)) if *o == w)
    }
    fn err<T>(&self, message: &str) -> Result<T, ParseError> {
        Err(ParseError {
            at: self.at(),
            message: message.to_string(),
        })
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.is_word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }
    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.is_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.compare()
    }
    fn compare(&mut self) -> Result<Expr, ParseError> {
        // A parenthesised condition: `(a > 1 or b > 2)`.
        if self.peek() == Some(&Tok::LParen) {
            let save = self.pos;
            self.pos += 1;
            if let Ok(inner) = self.or() {
                if self.peek() == Some(&Tok::RParen) && is_condition(&inner) {
                    self.pos += 1;
                    return Ok(inner);
                }
            }
            self.pos = save;
        }
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            _ => return self.err("expected a comparison (<, <=, >, >=, ==, !=)"),
        };
        self.pos += 1;
        let right = self.sum()?;
        Ok(Expr::Compare(Box::new(left), op, Box::new(right)))
    }
    fn sum(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("+")) => ArithOp::Add,
                Some(Tok::Op("-")) => ArithOp::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Expr::Arith(Box::new(left), op, Box::new(self.product()?));
        }
    }
    fn product(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.atom()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => ArithOp::Mul,
                Some(Tok::Op("/")) => ArithOp::Div,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = Expr::Arith(Box::new(left), op, Box::new(self.atom()?));
        }
    }
    fn atom(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Number(n))
            }
            Some(Tok::Op("-")) => {
                self.pos += 1;
                let inner = self.atom()?;
                Ok(Expr::Arith(
                    Box::new(Expr::Number(0.0)),
                    ArithOp::Sub,
                    Box::new(inner),
                ))
            }
            Some(Tok::Ident(name))
                if !["and", "or", "not"].contains(&name.to_ascii_lowercase().as_str()) =>
            {
                self.pos += 1;
                Ok(Expr::Field(name))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let inner = self.sum()?;
                if self.peek() != Some(&Tok::RParen) {
                    return self.err("expected ')'");
                }
                self.pos += 1;
                Ok(inner)
            }
            _ => self.err("expected a number, a field name or '('"),
        }
    }
}

fn is_condition(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Compare(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(..)
    )
}

impl Expr {
    /// Parses a condition.
    pub fn parse(src: &str) -> Result<Expr, ParseError> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.len(),
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return p.err("unexpected text after the condition");
        }
        Ok(e)
    }

    /// The field names it reads.
    pub fn fields(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Number(_) => {}
            Expr::Field(f) => out.push(f),
            Expr::Arith(a, _, b) | Expr::Compare(a, _, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Expr::Not(a) => a.collect(out),
        }
    }

    fn value(&self, get: &dyn Fn(&str) -> Option<f64>) -> Option<f64> {
        match self {
            Expr::Number(n) => Some(*n),
            Expr::Field(f) => get(f),
            Expr::Arith(a, op, b) => {
                let (a, b) = (a.value(get)?, b.value(get)?);
                let v = match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div => a / b,
                };
                v.is_finite().then_some(v)
            }
            _ => None,
        }
    }

    /// Evaluates the condition over a reading's fields (`get` looks a field up).
    pub fn holds(&self, get: &dyn Fn(&str) -> Option<f64>) -> bool {
        match self {
            Expr::Compare(a, op, b) => match (a.value(get), b.value(get)) {
                (Some(a), Some(b)) => match op {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    CmpOp::Ge => a >= b,
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                },
                _ => false,
            },
            Expr::And(a, b) => a.holds(get) && b.holds(get),
            Expr::Or(a, b) => a.holds(get) || b.holds(get),
            Expr::Not(a) => !a.holds(get),
            _ => false,
        }
    }
}

/// Suffix of a derived field: `<field>_rate` is the field's change per minute of event time
/// since the sensor's previous reading (absent for its first reading), so rules can watch
/// rates of change: `avgSpeed_rate <= -5` (speed falling by 5 km/h a minute or faster).
pub const RATE_SUFFIX: &str = "_rate";

/// Suffix of a derived field: `<field>_z` is how unusual the reading is for this sensor, the
/// z-score of the value against an exponentially weighted baseline of the sensor's own past
/// readings ([`Baseline`]), so rules can flag anomalies: `avgSpeed_z <= -3`.
pub const Z_SUFFIX: &str = "_z";

/// A learned per-sensor baseline of one field: exponentially weighted mean and variance
/// (weight `alpha` per reading, about the last 1/alpha readings). Its z-score is absent until
/// `min_samples` readings were seen or while the variance is zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    mean: f64,
    var: f64,
    n: u64,
}

impl Baseline {
    /// The weight of each new reading (about the last 20 readings).
    pub const ALPHA: f64 = 0.05;
    /// Readings needed before a z-score is given.
    pub const MIN_SAMPLES: u64 = 12;

    /// A baseline starting at `first`.
    pub fn new(first: f64) -> Self {
        Self {
            mean: first,
            var: 0.0,
            n: 1,
        }
    }

    /// The z-score of `x` against the baseline as it stands.
    pub fn z(&self, x: f64) -> Option<f64> {
        (self.n >= Self::MIN_SAMPLES && self.var > 1e-12).then(|| (x - self.mean) / self.var.sqrt())
    }

    /// Learns a reading.
    pub fn learn(&mut self, x: f64) {
        let delta = x - self.mean;
        self.mean += Self::ALPHA * delta;
        self.var = (1.0 - Self::ALPHA) * (self.var + Self::ALPHA * delta * delta);
        self.n += 1;
    }
}

/// The change per minute of each field between two readings `(time ms, fields)`.
pub fn rate(
    previous: (u64, &[(std::sync::Arc<str>, f64)]),
    current: (u64, &[(std::sync::Arc<str>, f64)]),
    field: &str,
) -> Option<f64> {
    let dt = current.0.checked_sub(previous.0).filter(|dt| *dt > 0)? as f64 / 60_000.0;
    let value = |fields: &[(std::sync::Arc<str>, f64)]| {
        fields.iter().find(|(n, _)| &**n == field).map(|f| f.1)
    };
    Some((value(current.1)? - value(previous.1)?) / dt)
}

/// A lifecycle change of a threshold rule's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The incident starts, at the event time its condition first held (not when `for` ran out).
    Start {
        /// Event time the enter condition first held, Unix ms.
        started_at: u64,
    },
    /// The incident ends.
    End {
        /// Event time it started.
        started_at: u64,
    },
}

/// A threshold rule on one subject: enter when `enter` has held for `for_ms` of event time,
/// leave when `exit` holds (hysteresis: between the two nothing changes). Readings must come
/// in event-time order (the dataflow orders them before the rule sees them).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    for_ms: u64,
    /// Event time the enter condition started holding, while it holds and no incident is on.
    pending_since: Option<u64>,
    /// Start time of the ongoing incident.
    active_since: Option<u64>,
}

impl Threshold {
    /// A rule whose enter condition must hold `for_ms` before the incident starts.
    pub fn new(for_ms: u64) -> Self {
        Self {
            for_ms,
            pending_since: None,
            active_since: None,
        }
    }

    /// Feeds one reading: whether the enter and exit conditions hold at event time `t`.
    pub fn step(&mut self, t: u64, enter: bool, exit: bool) -> Option<Transition> {
        if let Some(started_at) = self.active_since {
            if exit {
                self.active_since = None;
                self.pending_since = None;
                return Some(Transition::End { started_at });
            }
            return None;
        }
        if !enter {
            self.pending_since = None;
            return None;
        }
        let since = *self.pending_since.get_or_insert(t);
        if t.saturating_sub(since) >= self.for_ms {
            self.active_since = Some(since);
            self.pending_since = None;
            return Some(Transition::Start { started_at: since });
        }
        None
    }

    /// Whether an incident is ongoing.
    pub fn is_active(&self) -> bool {
        self.active_since.is_some()
    }
}

/// A stable incident id: the same rule, subject and start always give the same id, so a
/// replay or a re-delivery yields the same incidents (FNV-1a, hex).
pub fn incident_id(rule: &str, subject: &str, started_at: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule
        .bytes()
        .chain([0xff])
        .chain(subject.bytes())
        .chain([0xff])
        .chain(started_at.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn eval(src: &str, fields: &[(&str, f64)]) -> bool {
        let map: HashMap<&str, f64> = fields.iter().copied().collect();
        Expr::parse(src).unwrap().holds(&|f| map.get(f).copied())
    }

    #[test]
    fn citypulse_conditions_evaluate() {
        let congestion = "avgSpeed <= 35 and vehicleCount >= 10";
        assert!(eval(
            congestion,
            &[("avgSpeed", 30.0), ("vehicleCount", 12.0)]
        ));
        assert!(!eval(
            congestion,
            &[("avgSpeed", 40.0), ("vehicleCount", 12.0)]
        ));
        assert!(
            !eval(congestion, &[("vehicleCount", 12.0)]),
            "a missing field never starts an event"
        );
        assert!(eval(
            "vehiclecount / totalspaces >= 0.9",
            &[("vehiclecount", 900.0), ("totalspaces", 953.0)]
        ));
        assert!(
            !eval(
                "vehiclecount / totalspaces >= 0.9",
                &[("vehiclecount", 900.0), ("totalspaces", 0.0)]
            ),
            "no division by zero"
        );
        assert!(eval(
            "(a > 1 or b > 2) and not c == 0",
            &[("a", 0.0), ("b", 3.0), ("c", 1.0)]
        ));
        assert!(eval(
            "a > 0 && b > 1 || c < -1",
            &[("a", 1.0), ("b", 0.0), ("c", -2.0)]
        ));
        assert!(!eval("!(a > 0) || b > 1", &[("a", 1.0), ("b", 0.0)]));
        assert!(
            Expr::parse("a && b > 1").is_err(),
            "a bare field is not a condition"
        );
        assert!(eval("x - 2 * y > -0.5", &[("x", 1.0), ("y", 0.7)]));
        assert_eq!(
            Expr::parse(congestion).unwrap().fields(),
            ["avgSpeed", "vehicleCount"]
        );
    }

    #[test]
    fn a_baseline_learns_normal_and_flags_the_unusual() {
        let mut b = Baseline::new(50.0);
        assert_eq!(b.z(80.0), None, "no verdict before MIN_SAMPLES");
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..100 {
            b.learn(50.0 + rng.f64() * 4.0 - 2.0);
        }
        assert!(b.z(51.0).unwrap().abs() < 2.0);
        assert!(b.z(20.0).unwrap() < -10.0);
    }

    #[test]
    fn rates_are_per_minute_of_event_time() {
        let a: Vec<(std::sync::Arc<str>, f64)> = vec![("speed".into(), 60.0)];
        let b: Vec<(std::sync::Arc<str>, f64)> = vec![("speed".into(), 40.0)];
        assert_eq!(rate((0, &a), (300_000, &b), "speed"), Some(-4.0));
        assert_eq!(rate((0, &a), (0, &b), "speed"), None, "no time passed");
        assert_eq!(rate((0, &a), (60_000, &b), "count"), None);
    }

    #[test]
    fn parse_errors_point_at_the_place() {
        let e = Expr::parse("avgSpeed <= ").unwrap_err();
        assert_eq!(
            e.to_string(),
            "at character 13: expected a number, a field name or '('"
        );
        let e = Expr::parse("avgSpeed 35").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("at character 10: expected a comparison"),
            "{e}"
        );
        assert!(Expr::parse("a > 1 $").is_err());
        assert!(Expr::parse("(a > 1").is_err());
    }

    #[test]
    fn hysteresis_and_for_durations() {
        let mut r = Threshold::new(600_000); // 10 minutes
        assert_eq!(r.step(0, true, false), None);
        assert_eq!(r.step(300_000, true, false), None);
        assert_eq!(
            r.step(600_000, true, false),
            Some(Transition::Start { started_at: 0 })
        );
        // Between the enter and exit conditions nothing changes.
        assert_eq!(r.step(900_000, false, false), None);
        assert!(r.is_active());
        assert_eq!(
            r.step(1_200_000, false, true),
            Some(Transition::End { started_at: 0 })
        );
        // A condition that drops before `for` runs out starts nothing.
        assert_eq!(r.step(1_500_000, true, false), None);
        assert_eq!(r.step(1_800_000, false, false), None);
        assert_eq!(r.step(2_100_000, true, false), None);
        assert_eq!(
            r.step(2_700_000, true, false),
            Some(Transition::Start {
                started_at: 2_100_000
            })
        );
    }

    #[test]
    fn any_text_parses_or_fails_without_panicking() {
        let seeds = [
            "avgSpeed <= 35 and vehicleCount >= 10",
            "(a + b) / c != 2.5 or not d",
            "€uro > ½ && 東京 < 1",
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for i in 0..20_000 {
            let mut chars: Vec<char> = seeds[i % seeds.len()].chars().collect();
            for _ in 0..rng.usize(0..4) {
                if chars.is_empty() {
                    break;
                }
                let at = rng.usize(0..chars.len());
                let pick = [
                    '(', ')', '<', '=', '!', '&', '|', '.', '9', 'x', ' ', '€', '-',
                ][rng.usize(0..13)];
                match rng.u8(0..3) {
                    0 => chars[at] = pick,
                    1 => {
                        chars.remove(at);
                    }
                    _ => chars.insert(at, pick),
                }
            }
            let text: String = chars.into_iter().collect();
            if let Ok(e) = Expr::parse(&text) {
                let _ = e.holds(&|_| Some(1.0));
            }
        }
    }

    #[test]
    fn incident_ids_are_stable_and_distinct() {
        assert_eq!(
            incident_id("congestion", "158324", 1),
            incident_id("congestion", "158324", 1)
        );
        assert_ne!(
            incident_id("congestion", "158324", 1),
            incident_id("congestion", "158324", 2)
        );
        assert_ne!(
            incident_id("congestion", "1583", 24),
            incident_id("congestion", "15832", 4)
        );
        assert_eq!(incident_id("a", "b", 0).len(), 16);
    }
}

// ---- rule files ----------------------------------------------------------------------------

/// A threshold rule, loaded from `config/rules/*.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Rule name (unique).
    pub name: String,
    /// Event type, used in topics (`aqyl/events/<event_type>/<subject>`).
    pub event_type: String,
    /// The sensor type it watches.
    pub sensor_type: String,
    /// What starts an incident.
    pub kind: RuleKind,
    /// When an incident starts.
    pub enter: Expr,
    /// `enter` as written.
    pub enter_text: String,
    /// When it ends (hysteresis: default `not enter`).
    pub exit: Expr,
    /// How long `enter` must hold, in event time, before the incident starts.
    pub for_ms: u64,
    /// Severity written with each message (`info`, `warning`, `critical`).
    pub level: String,
    /// Message template; `{subject}`, `{level}` and `{<field>}` are filled in.
    pub message: String,
    /// Level rules: (name, condition) in order.
    pub levels: Vec<(String, Expr)>,
    /// Level rules: the level at which no incident is ongoing.
    pub quiet: Option<String>,
    /// The file it came from.
    pub source: std::path::PathBuf,
}

/// Kinds of rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `enter` holding for `for` starts an incident; `exit` ends it.
    Threshold,
    /// No reading from a sensor for `for` (of event time) starts an incident; its next
    /// reading ends it. Only sensors that have reported at least once are watched.
    Absence,
    /// An area incident while at least `at_least` of the area's sensors have an ongoing
    /// incident of rule `of` (a sensor rule of the same file).
    Area {
        /// Index of the counted rule among all loaded rules.
        of: usize,
        /// How many sensors must be in the state.
        at_least: usize,
    },
    /// The reading falls into one of `levels` (the first whose condition holds); an incident
    /// is ongoing while the level is not `quiet`, with an `update` on every level change.
    Level,
}

impl Rule {
    /// Fills the message template for a subject and its values.
    pub fn render(&self, subject: &str, values: &[(std::sync::Arc<str>, f64)]) -> String {
        self.render_level(subject, "", values)
    }

    /// Fills the message template, `{level}` included.
    pub fn render_level(
        &self,
        subject: &str,
        level: &str,
        values: &[(std::sync::Arc<str>, f64)],
    ) -> String {
        let mut out = self
            .message
            .replace("{subject}", subject)
            .replace("{level}", level);
        for (name, v) in values {
            out = out.replace(&format!("{{{name}}}"), &format!("{v}"));
        }
        out
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleFile>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    event_type: Option<String>,
    sensor_type: String,
    #[serde(default)]
    kind: Option<toml::Spanned<String>>,
    /// Area rules: the sensor rule whose incidents are counted.
    of: Option<String>,
    /// Area rules: how many of the area's sensors.
    at_least: Option<usize>,
    /// Level rules: `[{ name, when }]` in order.
    levels: Option<Vec<LevelFile>>,
    /// Level rules: the level that means "nothing going on".
    quiet: Option<String>,
    enter: Option<toml::Spanned<String>>,
    exit: Option<toml::Spanned<String>>,
    #[serde(default, rename = "for")]
    for_: Option<toml::Spanned<String>>,
    #[serde(default = "default_level")]
    level: String,
    message: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelFile {
    name: String,
    when: toml::Spanned<String>,
}

fn default_level() -> String {
    "warning".into()
}

/// Parses one rules file, checking each rule against the sensor types (their fields).
pub fn parse_rules(
    path: &std::path::Path,
    text: &str,
    types: &[crate::descriptor::SensorType],
) -> Result<Vec<Rule>, crate::ConfigErrors> {
    use crate::ConfigError;
    let file: RulesFile =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    for spanned in &file.rule {
        let at = |offset: usize, msg: String| ConfigError::at(path, text, Some(offset), msg);
        let r = spanned.get_ref();
        let Some(ty) = types.iter().find(|t| *t.name == r.sensor_type) else {
            let known: Vec<&str> = types.iter().map(|t| &*t.name).collect();
            errors.push(at(
                spanned.span().start,
                format!(
                    "rule {:?} watches sensor type {:?}, which is not configured; known: {}",
                    r.name,
                    r.sensor_type,
                    known.join(", ")
                ),
            ));
            continue;
        };
        let mut parse = |src: &toml::Spanned<String>, what: &str| -> Option<Expr> {
            match Expr::parse(src.get_ref()) {
                Ok(e) => {
                    for f in e.fields() {
                        let base = f
                            .strip_suffix(RATE_SUFFIX)
                            .or_else(|| f.strip_suffix(Z_SUFFIX))
                            .unwrap_or(f);
                        if !ty.fields.iter().any(|g| &*g.name == base) {
                            errors.push(at(src.span().start, format!("{what} of rule {:?} reads {f:?}, which sensor type {:?} does not declare", r.name, ty.name)));
                            return None;
                        }
                    }
                    Some(e)
                }
                Err(e) => {
                    errors.push(at(
                        src.span().start,
                        format!("{what} of rule {:?}: {e}", r.name),
                    ));
                    None
                }
            }
        };
        let kind = match r.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("threshold", _)) => RuleKind::Threshold,
            Some(("absence", _)) => RuleKind::Absence,
            Some(("level", span)) => {
                if r.levels.as_ref().is_none_or(|l| l.len() < 2) {
                    errors.push(at(span.start, format!("level rule {:?} needs levels = [{{ name = \"low\", when = \"...\" }}, ...] with at least two levels", r.name)));
                    continue;
                }
                RuleKind::Level
            }
            Some(("area", span)) => {
                let of = r.of.as_deref().and_then(|name| {
                    rules.iter().position(|o: &Rule| {
                        o.name == name && !matches!(o.kind, RuleKind::Area { .. })
                    })
                });
                match (of, r.at_least) {
                    (Some(of), Some(at_least)) if at_least >= 1 => RuleKind::Area { of, at_least },
                    _ => {
                        errors.push(at(
                            span.start,
                            format!("area rule {:?} needs of = \"<a sensor rule defined above in this file>\" and at_least = <n ≥ 1>", r.name),
                        ));
                        continue;
                    }
                }
            }
            Some((other, span)) => {
                errors.push(at(
                    span.start,
                    format!("rule kind {other:?} is not known; use \"threshold\", \"absence\" or \"area\""),
                ));
                continue;
            }
        };
        let never = || {
            Expr::Compare(
                Box::new(Expr::Number(0.0)),
                CmpOp::Lt,
                Box::new(Expr::Number(0.0)),
            )
        };
        let (enter, exit) = match (kind, &r.enter) {
            (RuleKind::Absence | RuleKind::Area { .. } | RuleKind::Level, None) => {
                (Some(never()), Some(never()))
            }
            (RuleKind::Absence | RuleKind::Area { .. } | RuleKind::Level, Some(e)) => {
                errors.push(at(
                    e.span().start,
                    format!(
                        "rule {:?} is an absence rule: it takes no enter/exit, only `for`",
                        r.name
                    ),
                ));
                continue;
            }
            (RuleKind::Threshold, None) => {
                errors.push(at(
                    spanned.span().start,
                    format!("rule {:?} needs enter = \"<condition>\"", r.name),
                ));
                continue;
            }
            (RuleKind::Threshold, Some(e)) => {
                let enter = parse(e, "enter");
                let exit = match &r.exit {
                    Some(x) => parse(x, "exit"),
                    None => enter.clone().map(|e| Expr::Not(Box::new(e))),
                };
                (enter, exit)
            }
        };
        let mut levels = Vec::new();
        for l in r.levels.iter().flatten() {
            if let Some(e) = parse(&l.when, "a level condition") {
                levels.push((l.name.clone(), e));
            }
        }
        if kind == RuleKind::Level && levels.len() != r.levels.as_ref().map_or(0, Vec::len) {
            continue;
        }
        if kind == RuleKind::Absence && r.for_.is_none() {
            errors.push(at(
                spanned.span().start,
                format!(
                    "absence rule {:?} needs for = \"<duration>\" (how long a silence counts)",
                    r.name
                ),
            ));
            continue;
        }
        let for_ms = match &r.for_ {
            None => Some(0),
            Some(d) => match crate::duration::parse(d.get_ref()) {
                Ok(d) => Some(d.as_millis() as u64),
                Err(e) => {
                    errors.push(at(d.span().start, e));
                    None
                }
            },
        };
        if let Some(q) = &r.quiet {
            if !levels.iter().any(|(n, _)| n == q) {
                errors.push(at(
                    spanned.span().start,
                    format!(
                        "quiet level {q:?} of rule {:?} is not one of its levels",
                        r.name
                    ),
                ));
                continue;
            }
        }
        if rules.iter().any(|o: &Rule| o.name == r.name) {
            errors.push(at(
                spanned.span().start,
                format!("rule {:?} is defined twice", r.name),
            ));
            continue;
        }
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.push(at(
                spanned.span().start,
                format!(
                    "rule name {:?} must be ASCII letters, digits, '_' or '-'",
                    r.name
                ),
            ));
            continue;
        }
        if let (Some(enter), Some(exit), Some(for_ms)) = (enter, exit, for_ms) {
            rules.push(Rule {
                event_type: r.event_type.clone().unwrap_or_else(|| r.name.clone()),
                name: r.name.clone(),
                sensor_type: r.sensor_type.clone(),
                kind,
                enter,
                enter_text: match (kind, &r.enter) {
                    (_, Some(e)) => e.get_ref().clone(),
                    (RuleKind::Area { at_least, .. }, None) => {
                        format!(
                            "at least {at_least} of an area's sensors in {}",
                            r.of.as_deref().unwrap_or("")
                        )
                    }
                    _ => "no reading".to_string(),
                },
                exit,
                for_ms,
                level: r.level.clone(),
                message: r
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("{} on {{subject}}", r.name)),
                levels,
                quiet: r.quiet.clone(),
                source: path.to_path_buf(),
            });
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(crate::ConfigErrors(errors))
    }
}

/// Loads every `*.toml` rules file of `dir` (a missing directory means no rules).
pub fn load_rules(
    dir: &std::path::Path,
    types: &[crate::descriptor::SensorType],
) -> Result<Vec<Rule>, crate::ConfigErrors> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let (mut rules, mut errors) = (Vec::new(), Vec::new());
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(crate::ConfigError::file(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse_rules(&path, &text, types) {
            Ok(mut r) => {
                // Area rules point at rules of their file; re-base onto the combined list.
                let base = rules.len();
                for rule in &mut r {
                    if let RuleKind::Area { of, .. } = &mut rule.kind {
                        *of += base;
                    }
                }
                for rule in &r {
                    if let Some(other) = rules.iter().find(|o: &&Rule| o.name == rule.name) {
                        errors.push(crate::ConfigError::file(
                            &path,
                            format!(
                                "rule {:?} is already defined in {}",
                                rule.name,
                                other.source.display()
                            ),
                        ));
                    }
                }
                rules.append(&mut r);
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(crate::ConfigErrors(errors))
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use std::path::Path;

    fn traffic() -> Vec<crate::descriptor::SensorType> {
        let text = "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n[[fields]]\nname = \"vehicleCount\"\n";
        vec![crate::descriptor::SensorType::from_toml(Path::new("t.toml"), text).unwrap()]
    }

    #[test]
    fn rules_parse_with_defaults() {
        let text = "[[rule]]\nname = \"congestion\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed <= 35 and vehicleCount >= 10\"\nexit = \"avgSpeed > 35 and vehicleCount < 10\"\nfor = \"10m\"\nmessage = \"Congestion on {subject}: {avgSpeed} km/h\"\n";
        let rules = parse_rules(Path::new("r.toml"), text, &traffic()).unwrap();
        assert_eq!(rules[0].event_type, "congestion");
        assert_eq!(rules[0].for_ms, 600_000);
        assert_eq!(rules[0].level, "warning");
        let values: Vec<(std::sync::Arc<str>, f64)> = vec![("avgSpeed".into(), 20.0)];
        assert_eq!(
            rules[0].render("158324", &values),
            "Congestion on 158324: 20 km/h"
        );
    }

    #[test]
    fn rule_mistakes_name_the_line() {
        let err = |text: &str| {
            parse_rules(Path::new("r.toml"), text, &traffic())
                .unwrap_err()
                .to_string()
        };
        let e = err("[[rule]]\nname = \"x\"\nsensor_type = \"traffic\"\nenter = \"speed < 3\"\n");
        assert_eq!(e, "r.toml:4: enter of rule \"x\" reads \"speed\", which sensor type \"traffic\" does not declare");
        let e = err("[[rule]]\nname = \"x\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed <\"\n");
        assert!(
            e.starts_with("r.toml:4: enter of rule \"x\": at character 11"),
            "{e}"
        );
        let e = err("[[rule]]\nname = \"x\"\nsensor_type = \"parking\"\nenter = \"a < 1\"\n");
        assert!(e.contains("not configured; known: traffic"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed < 1\"\nfor = \"ever\"\n");
        assert!(e.starts_with("r.toml:5: invalid duration"), "{e}");
    }
}
