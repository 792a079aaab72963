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

/// How deeply a condition may nest (parentheses, `not`, unary minus): far beyond any rule a
/// person writes, and shallow enough that parsing and evaluating never exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// How many tokens a condition may have: a flat chain (`a > 1 and a > 1 and ...`) builds a
/// tree as deep as it is long, which evaluating walks recursively.
pub const MAX_TOKENS: usize = 1024;

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
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

    /// Runs `f` one nesting level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Expr, ParseError>,
    ) -> Result<Expr, ParseError> {
        if self.depth >= MAX_DEPTH {
            return self.err(&format!(
                "the condition nests deeper than {MAX_DEPTH} levels; split it into simpler rules"
            ));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.nested(Self::or_chain)
    }
    fn or_chain(&mut self) -> Result<Expr, ParseError> {
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
            return Ok(Expr::Not(Box::new(self.nested(Self::not)?)));
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
                let inner = self.nested(Self::atom)?;
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
                let inner = self.nested(Self::sum)?;
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
        if toks.len() > MAX_TOKENS {
            return Err(ParseError {
                at: toks.get(MAX_TOKENS).map_or(src.len(), |t| t.0),
                message: format!(
                    "the condition has more than {MAX_TOKENS} terms and operators; split it into simpler rules"
                ),
            });
        }
        let mut p = Parser {
            toks,
            pos: 0,
            end: src.len(),
            depth: 0,
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
    fn hostile_nesting_is_refused_not_a_stack_overflow() {
        for deep in [
            format!("{}a > 1{}", "(".repeat(30_000), ")".repeat(30_000)),
            format!("{}a > 1", "not ".repeat(30_000)),
            format!("a > {}1", "-".repeat(30_000)),
            format!("a > {}1{}", "(".repeat(30_000), ")".repeat(30_000)),
        ] {
            let err = Expr::parse(&deep).unwrap_err();
            assert!(
                err.message.contains("more than 1024 terms"),
                "{}",
                err.message
            );
        }
        for deep in [
            format!("{}a > 1{}", "(".repeat(100), ")".repeat(100)),
            format!("{}a > 1", "not ".repeat(100)),
            format!("a > {}1", "-".repeat(100)),
        ] {
            let err = Expr::parse(&deep).unwrap_err();
            assert!(
                err.message.contains("nests deeper than 64"),
                "{}",
                err.message
            );
        }
        let long = vec!["a > 1"; 20_000].join(" and ");
        let err = Expr::parse(&long).unwrap_err();
        assert!(
            err.message.contains("more than 1024 terms"),
            "{}",
            err.message
        );
        let fine = format!("{}a > 1{}", "(".repeat(20), ")".repeat(20));
        assert!(Expr::parse(&fine).is_ok());
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
}
