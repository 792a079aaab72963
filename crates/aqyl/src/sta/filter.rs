//! `$filter`: the subset of the OData expression language SensorThings clients use, parsed
//! by recursive descent into an [`Expr`] and evaluated against an entity through [`Resolve`].
//!
//! Supported: comparisons (`eq ne gt ge lt le`), `and`, `or`, `not`, parentheses, arithmetic
//! (`add sub mul div mod`, unary `-`), literals (numbers, `'strings'` with `''` for a quote,
//! `true`, `false`, `null`, date-times such as `2026-01-01T00:00:00Z`, and
//! `geography'POINT(lon lat)'` / `geography'POLYGON((...))'`), property paths through
//! navigation (`Thing/properties/area`, `Locations/location`), and the functions
//! `substringof`, `contains`, `startswith`, `endswith`, `length`, `tolower`, `toupper`,
//! `trim`, `concat`, `round`, `floor`, `ceiling`, `year`, `month`, `day`, `hour`, `minute`,
//! `second`, `geo.intersects`, `st_intersects`, `st_within`, `st_contains`, `geo.distance`,
//! `st_distance`.
//!
//! A path through a to-many navigation has several values; a comparison holds when it holds
//! for any of them (FROST-Server's reading of `Locations/location` on a Thing).
//!
//! Hand-written: the OData crates on crates.io parse OData 4 without `substringof`, geography
//! literals or SensorThings paths, and without a bound on nesting, which a URL must not be
//! able to turn into a stack overflow. Here the text is at most [`MAX_LEN`] bytes and nests
//! at most [`MAX_DEPTH`] levels.

use super::geo::{self, Geometry};
use serde_json::Value;

/// Longest `$filter` accepted, bytes.
pub const MAX_LEN: usize = 16 * 1024;
/// Deepest nesting accepted (parentheses, `not`, function arguments, operators).
pub const MAX_DEPTH: usize = 32;
/// Most operators and function calls one expression may have (evaluation recurses through
/// them, so a long flat chain must be bounded too).
pub const MAX_OPERATORS: usize = 256;
/// Most value combinations one operator looks at (paths through to-many navigation).
const MAX_COMBINATIONS: usize = 10_000;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Lit),
    /// A property path, e.g. `["Thing", "properties", "area"]`.
    Path(Vec<String>),
    /// `a op b`.
    Binary(Op, Box<Expr>, Box<Expr>),
    /// `not a`.
    Not(Box<Expr>),
    /// `-a`.
    Neg(Box<Expr>),
    /// A function call.
    Call(Func, Vec<Expr>),
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// A date-time, Unix ms.
    Time(i64),
    /// A geometry.
    Geo(Geometry),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `or`.
    Or,
    /// `and`.
    And,
    /// `eq`.
    Eq,
    /// `ne`.
    Ne,
    /// `gt`.
    Gt,
    /// `ge`.
    Ge,
    /// `lt`.
    Lt,
    /// `le`.
    Le,
    /// `add`.
    Add,
    /// `sub`.
    Sub,
    /// `mul`.
    Mul,
    /// `div`.
    Div,
    /// `mod`.
    Mod,
}

/// Functions, with their number of arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `substringof(needle, haystack)`.
    SubstringOf,
    /// `contains(haystack, needle)`.
    Contains,
    /// `startswith(s, prefix)`.
    StartsWith,
    /// `endswith(s, suffix)`.
    EndsWith,
    /// `length(s)`.
    Length,
    /// `tolower(s)`.
    ToLower,
    /// `toupper(s)`.
    ToUpper,
    /// `trim(s)`.
    Trim,
    /// `concat(a, b)`.
    Concat,
    /// `round(x)`.
    Round,
    /// `floor(x)`.
    Floor,
    /// `ceiling(x)`.
    Ceiling,
    /// `year(t)` and the other parts of a date-time.
    Year,
    /// `month(t)`.
    Month,
    /// `day(t)`.
    Day,
    /// `hour(t)`.
    Hour,
    /// `minute(t)`.
    Minute,
    /// `second(t)`.
    Second,
    /// `geo.intersects(a, b)`, `st_intersects(a, b)`.
    Intersects,
    /// `st_within(a, b)`: a within b.
    Within,
    /// `st_contains(a, b)`: b within a.
    ContainsGeo,
    /// `geo.distance(a, b)`, `st_distance(a, b)`, degrees.
    Distance,
}

impl Func {
    fn by_name(name: &str) -> Option<(Func, usize)> {
        use Func::*;
        Some(match name.to_ascii_lowercase().as_str() {
            "substringof" => (SubstringOf, 2),
            "contains" => (Contains, 2),
            "startswith" => (StartsWith, 2),
            "endswith" => (EndsWith, 2),
            "length" => (Length, 1),
            "tolower" => (ToLower, 1),
            "toupper" => (ToUpper, 1),
            "trim" => (Trim, 1),
            "concat" => (Concat, 2),
            "round" => (Round, 1),
            "floor" => (Floor, 1),
            "ceiling" => (Ceiling, 1),
            "year" => (Year, 1),
            "month" => (Month, 1),
            "day" => (Day, 1),
            "hour" => (Hour, 1),
            "minute" => (Minute, 1),
            "second" => (Second, 1),
            "geo.intersects" | "st_intersects" => (Intersects, 2),
            "st_within" => (Within, 2),
            "st_contains" => (ContainsGeo, 2),
            "geo.distance" | "st_distance" => (Distance, 2),
            _ => return None,
        })
    }
}

// ---- lexing -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    Comma,
    Slash,
    Minus,
    Word(String),
    Lit(Lit),
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' | b')' | b',' | b'/' => {
                let t = match c {
                    b'(' => Tok::Open,
                    b')' => Tok::Close,
                    b',' => Tok::Comma,
                    _ => Tok::Slash,
                };
                out.push((i, t));
                i += 1;
            }
            b'\'' => {
                let (s, next) = quoted(text, i)?;
                out.push((start, Tok::Lit(Lit::Str(s))));
                i = next;
            }
            b'0'..=b'9' | b'-' => {
                if let Some((ms, next)) = datetime(text, i) {
                    out.push((start, Tok::Lit(Lit::Time(ms))));
                    i = next;
                    continue;
                }
                if c == b'-' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    out.push((i, Tok::Minus));
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_digit()
                        || b[j] == b'.'
                        || matches!(b[j], b'e' | b'E')
                        || (matches!(b[j], b'+' | b'-') && matches!(b[j - 1], b'e' | b'E')))
                {
                    j += 1;
                }
                let n: f64 = text[i..j]
                    .parse()
                    .map_err(|_| format!("{:?} at {i} is not a number", &text[i..j]))?;
                // A leading minus is the unary operator unless it starts the literal.
                out.push((start, Tok::Lit(Lit::Num(n))));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' || c == b'$' => {
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'_' | b'.' | b'@' | b'$'))
                {
                    j += 1;
                }
                let word = &text[i..j];
                if b.get(j) == Some(&b'\'')
                    && (word.eq_ignore_ascii_case("geography")
                        || word.eq_ignore_ascii_case("geometry"))
                {
                    let (wkt, next) = quoted(text, j)?;
                    out.push((start, Tok::Lit(Lit::Geo(geo::parse_wkt(&wkt)?))));
                    i = next;
                    continue;
                }
                let tok = match word {
                    "true" => Tok::Lit(Lit::Bool(true)),
                    "false" => Tok::Lit(Lit::Bool(false)),
                    "null" => Tok::Lit(Lit::Null),
                    w => Tok::Word(w.to_string()),
                };
                out.push((start, tok));
                i = j;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected {ch:?} at {i}"));
            }
        }
    }
    Ok(out)
}

/// A `'...'` string starting at `at` (a doubled quote is one quote) and the index after it.
fn quoted(text: &str, at: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = text[at + 1..].char_indices().peekable();
    while let Some((k, ch)) = chars.next() {
        if ch == '\'' {
            if chars.peek().is_some_and(|(_, c)| *c == '\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return Ok((out, at + 1 + k + 1));
        }
        out.push(ch);
    }
    Err(format!("the string starting at {at} has no closing quote"))
}

/// A date-time literal (`2026-01-02`, `2026-01-02T03:04:05.678Z`, `...+02:00`) at `at`.
fn datetime(text: &str, at: usize) -> Option<(i64, usize)> {
    let rest = &text[at..];
    let b = rest.as_bytes();
    if b.len() < 10 || !(b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-') {
        return None;
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+')))
        .unwrap_or(rest.len());
    let lit = &rest[..end];
    let ms = if lit.len() == 10 {
        chrono::NaiveDate::parse_from_str(lit, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis()
    } else {
        chrono::DateTime::parse_from_rfc3339(lit)
            .ok()?
            .timestamp_millis()
    };
    Some((ms, at + end))
}

// ---- parsing ----------------------------------------------------------------------------

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    operators: usize,
}

/// Parses a `$filter` expression.
pub fn parse(text: &str) -> Result<Expr, String> {
    if text.len() > MAX_LEN {
        return Err(format!(
            "$filter is {} bytes long; the limit is {MAX_LEN}",
            text.len()
        ));
    }
    let toks = lex(text).map_err(|e| format!("$filter: {e}"))?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        operators: 0,
    };
    let e = p.or().map_err(|e| format!("$filter: {e}"))?;
    match p.toks.get(p.pos) {
        None => Ok(e),
        Some((at, t)) => Err(format!("$filter: unexpected {} at {at}", show(t))),
    }
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Slash => "'/'".into(),
        Tok::Minus => "'-'".into(),
        Tok::Word(w) => format!("{w:?}"),
        Tok::Lit(l) => format!("the literal {l:?}"),
    }
}

impl Parser {
    fn operator(&mut self) -> Result<(), String> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(format!(
                "the expression has more than {MAX_OPERATORS} operators and function calls"
            ));
        }
        Ok(())
    }

    fn deeper<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            ));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn word_is(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn at(&self) -> String {
        match self.toks.get(self.pos) {
            Some((at, t)) => format!("{} at {at}", show(t)),
            None => "the end".into(),
        }
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), String> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what}, found {}", self.at()))
        }
    }

    fn binary(
        &mut self,
        ops: &[(&str, Op)],
        next: fn(&mut Self) -> Result<Expr, String>,
        repeat: bool,
    ) -> Result<Expr, String> {
        // Operator levels do not count as nesting: only what can nest without bound does
        // (parentheses, `not`, `-`, function arguments).
        let mut left = next(self)?;
        loop {
            let Some(&(_, op)) = ops.iter().find(|(w, _)| self.word_is(w)) else {
                return Ok(left);
            };
            self.pos += 1;
            self.operator()?;
            let right = next(self)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
            if !repeat {
                return Ok(left);
            }
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        self.binary(&[("or", Op::Or)], Self::and, true)
    }

    fn and(&mut self) -> Result<Expr, String> {
        self.binary(&[("and", Op::And)], Self::not, true)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.word_is("not") {
            self.pos += 1;
            self.operator()?;
            return self.deeper(|p| Ok(Expr::Not(Box::new(p.not()?))));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        use Op::*;
        self.binary(
            &[
                ("eq", Eq),
                ("ne", Ne),
                ("gt", Gt),
                ("ge", Ge),
                ("lt", Lt),
                ("le", Le),
            ],
            Self::additive,
            false,
        )
    }

    fn additive(&mut self) -> Result<Expr, String> {
        self.binary(
            &[("add", Op::Add), ("sub", Op::Sub)],
            Self::multiplicative,
            true,
        )
    }

    fn multiplicative(&mut self) -> Result<Expr, String> {
        self.binary(
            &[("mul", Op::Mul), ("div", Op::Div), ("mod", Op::Mod)],
            Self::unary,
            true,
        )
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek() == Some(&Tok::Minus) {
            self.pos += 1;
            self.operator()?;
            return self.deeper(|p| Ok(Expr::Neg(Box::new(p.unary()?))));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some((_, tok)) = self.toks.get(self.pos).cloned() else {
            return Err("the expression ends too early".into());
        };
        match tok {
            Tok::Open => {
                self.pos += 1;
                let e = self.deeper(Self::or)?;
                self.expect(Tok::Close, "')'")?;
                Ok(e)
            }
            Tok::Lit(l) => {
                self.pos += 1;
                Ok(Expr::Lit(l))
            }
            Tok::Word(w) if self.toks.get(self.pos + 1).map(|(_, t)| t) == Some(&Tok::Open) => {
                let Some((func, arity)) = Func::by_name(&w) else {
                    return Err(format!("unknown function {w:?}"));
                };
                self.pos += 2;
                self.operator()?;
                let mut args = Vec::new();
                if self.peek() != Some(&Tok::Close) {
                    loop {
                        args.push(self.deeper(Self::or)?);
                        if self.peek() == Some(&Tok::Comma) {
                            self.pos += 1;
                            continue;
                        }
                        break;
                    }
                }
                self.expect(Tok::Close, "')' after the function's arguments")?;
                if args.len() != arity {
                    return Err(format!("{w} takes {arity} argument(s), got {}", args.len()));
                }
                Ok(Expr::Call(func, args))
            }
            Tok::Word(w) => {
                self.pos += 1;
                let mut path = vec![w];
                while self.peek() == Some(&Tok::Slash) {
                    self.pos += 1;
                    match self.toks.get(self.pos).map(|(_, t)| t.clone()) {
                        Some(Tok::Word(next)) => {
                            self.pos += 1;
                            path.push(next);
                        }
                        _ => {
                            return Err(format!(
                                "expected a property after '/', found {}",
                                self.at()
                            ))
                        }
                    }
                }
                if path.len() > MAX_DEPTH {
                    return Err(format!("a path may have at most {MAX_DEPTH} parts"));
                }
                Ok(Expr::Path(path))
            }
            t => Err(format!("unexpected {}", show(&t))),
        }
    }
}

// ---- evaluation -------------------------------------------------------------------------

/// Where paths are looked up: an entity with its navigation.
pub trait Resolve {
    /// The values at `path` (several through a to-many navigation; none when absent).
    fn resolve(&self, path: &[String]) -> Vec<Value>;
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Time(i64),
    Geo(Geometry),
    /// A JSON object or array (a GeoJSON geometry, `properties`).
    Json(Value),
}

impl From<Value> for Val {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => n.as_f64().map_or(Val::Null, Val::Num),
            Value::String(s) => Val::Str(s),
            v => Val::Json(v),
        }
    }
}

impl From<&Lit> for Val {
    fn from(l: &Lit) -> Self {
        match l {
            Lit::Null => Val::Null,
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Num(n) => Val::Num(*n),
            Lit::Str(s) => Val::Str(s.clone()),
            Lit::Time(t) => Val::Time(*t),
            Lit::Geo(g) => Val::Geo(g.clone()),
        }
    }
}

impl Val {
    fn truthy(&self) -> bool {
        matches!(self, Val::Bool(true))
    }

    fn str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// A date-time: a literal, or a string in RFC 3339 (the start of an interval `a/b`).
    fn time(&self) -> Option<i64> {
        match self {
            Val::Time(t) => Some(*t),
            Val::Str(s) => {
                let first = s.split('/').next()?;
                chrono::DateTime::parse_from_rfc3339(first)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
            _ => None,
        }
    }

    fn geometry(&self) -> Option<Geometry> {
        match self {
            Val::Geo(g) => Some(g.clone()),
            Val::Json(v) => geo::from_geojson(v),
            _ => None,
        }
    }
}

/// Whether `e` holds for the entity `r`.
pub fn matches(e: &Expr, r: &dyn Resolve) -> bool {
    eval(e, r).iter().any(Val::truthy)
}

fn eval(e: &Expr, r: &dyn Resolve) -> Vec<Val> {
    match e {
        Expr::Lit(l) => vec![Val::from(l)],
        Expr::Path(p) => {
            let vs: Vec<Val> = r.resolve(p).into_iter().map(Val::from).collect();
            if vs.is_empty() {
                vec![Val::Null]
            } else {
                vs
            }
        }
        Expr::Not(a) => vec![Val::Bool(!matches(a, r))],
        Expr::Neg(a) => eval(a, r)
            .into_iter()
            .map(|v| v.num().map_or(Val::Null, |n| Val::Num(-n)))
            .collect(),
        Expr::Binary(Op::And, a, b) => vec![Val::Bool(matches(a, r) && matches(b, r))],
        Expr::Binary(Op::Or, a, b) => vec![Val::Bool(matches(a, r) || matches(b, r))],
        Expr::Binary(op, a, b) => {
            let (xs, ys) = (eval(a, r), eval(b, r));
            pairs(&xs, &ys, |x, y| binary(*op, x, y))
        }
        Expr::Call(f, args) => {
            let vals: Vec<Vec<Val>> = args.iter().map(|a| eval(a, r)).collect();
            match vals.as_slice() {
                [x] => x.iter().map(|x| call1(*f, x)).collect(),
                [x, y] => pairs(x, y, |x, y| call2(*f, x, y)),
                _ => vec![Val::Null],
            }
        }
    }
}

fn pairs(xs: &[Val], ys: &[Val], f: impl Fn(&Val, &Val) -> Val) -> Vec<Val> {
    let mut out = Vec::new();
    for x in xs {
        for y in ys {
            if out.len() >= MAX_COMBINATIONS {
                return out;
            }
            out.push(f(x, y));
        }
    }
    out
}

fn compare(x: &Val, y: &Val) -> Option<std::cmp::Ordering> {
    match (x, y) {
        (Val::Num(a), Val::Num(b)) => a.partial_cmp(b),
        (Val::Time(_), _) | (_, Val::Time(_)) => Some(x.time()?.cmp(&y.time()?)),
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn binary(op: Op, x: &Val, y: &Val) -> Val {
    use std::cmp::Ordering::*;
    let ord = compare(x, y);
    let b = |v: bool| Val::Bool(v);
    match op {
        Op::Eq => b(x == y || ord == Some(Equal)),
        Op::Ne => b(!(x == y || ord == Some(Equal))),
        Op::Gt => b(ord == Some(Greater)),
        Op::Ge => b(matches!(ord, Some(Greater | Equal))),
        Op::Lt => b(ord == Some(Less)),
        Op::Le => b(matches!(ord, Some(Less | Equal))),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => match (x.num(), y.num()) {
            (Some(a), Some(c)) => Val::Num(match op {
                Op::Add => a + c,
                Op::Sub => a - c,
                Op::Mul => a * c,
                Op::Div => a / c,
                _ => a % c,
            }),
            _ => Val::Null,
        },
        Op::And | Op::Or => Val::Null, // evaluated above
    }
}

fn call1(f: Func, x: &Val) -> Val {
    use chrono::{Datelike, Timelike};
    let part = |get: fn(&chrono::DateTime<chrono::Utc>) -> u32| {
        x.time()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or(Val::Null, |t| Val::Num(get(&t) as f64))
    };
    match f {
        Func::Length => x
            .str()
            .map_or(Val::Null, |s| Val::Num(s.chars().count() as f64)),
        Func::ToLower => x.str().map_or(Val::Null, |s| Val::Str(s.to_lowercase())),
        Func::ToUpper => x.str().map_or(Val::Null, |s| Val::Str(s.to_uppercase())),
        Func::Trim => x
            .str()
            .map_or(Val::Null, |s| Val::Str(s.trim().to_string())),
        Func::Round => x.num().map_or(Val::Null, |n| Val::Num(n.round())),
        Func::Floor => x.num().map_or(Val::Null, |n| Val::Num(n.floor())),
        Func::Ceiling => x.num().map_or(Val::Null, |n| Val::Num(n.ceil())),
        Func::Year => part(|t| t.year() as u32),
        Func::Month => part(|t| t.month()),
        Func::Day => part(|t| t.day()),
        Func::Hour => part(|t| t.hour()),
        Func::Minute => part(|t| t.minute()),
        Func::Second => part(|t| t.second()),
        _ => Val::Null,
    }
}

fn call2(f: Func, x: &Val, y: &Val) -> Val {
    let strs = || Some((x.str()?, y.str()?));
    let geos = || Some((x.geometry()?, y.geometry()?));
    match f {
        Func::SubstringOf => strs().map_or(Val::Null, |(a, b)| Val::Bool(b.contains(a))),
        Func::Contains => strs().map_or(Val::Null, |(a, b)| Val::Bool(a.contains(b))),
        Func::StartsWith => strs().map_or(Val::Null, |(a, b)| Val::Bool(a.starts_with(b))),
        Func::EndsWith => strs().map_or(Val::Null, |(a, b)| Val::Bool(a.ends_with(b))),
        Func::Concat => strs().map_or(Val::Null, |(a, b)| Val::Str(format!("{a}{b}"))),
        Func::Intersects => geos().map_or(Val::Null, |(a, b)| Val::Bool(geo::intersects(&a, &b))),
        Func::Within => geos().map_or(Val::Null, |(a, b)| Val::Bool(geo::within(&a, &b))),
        Func::ContainsGeo => geos().map_or(Val::Null, |(a, b)| Val::Bool(geo::within(&b, &a))),
        Func::Distance => geos().map_or(Val::Null, |(a, b)| Val::Num(geo::distance(&a, &b))),
        _ => Val::Null,
    }
}

/// Orders two property values for `$orderby`: numbers, strings, date-times and booleans
/// among themselves; nulls (and values of other kinds) first.
pub fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (Val::from(a.clone()), Val::from(b.clone())) {
        (Val::Null, Val::Null) => Equal,
        (Val::Null, _) => Less,
        (_, Val::Null) => Greater,
        (x, y) => compare(&x, &y).unwrap_or(Equal),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// An entity as plain JSON; a path walks objects and fans out over arrays.
    struct J(Value);

    impl Resolve for J {
        fn resolve(&self, path: &[String]) -> Vec<Value> {
            let mut cur = vec![self.0.clone()];
            for p in path {
                cur = cur
                    .into_iter()
                    .flat_map(|v| match v.get(p) {
                        Some(Value::Array(a)) => a.clone(),
                        Some(v) => vec![v.clone()],
                        None => vec![],
                    })
                    .collect();
            }
            cur
        }
    }

    fn thing() -> J {
        J(json!({
            "name": "158324",
            "properties": {"type": "traffic", "area": "O'Brien Square"},
            "Locations": [{"location": {"type": "Point", "coordinates": [10.2, 56.15]}}],
            "result": 42.5,
            "phenomenonTime": "2026-03-01T12:30:00.000Z",
        }))
    }

    fn holds(f: &str) -> bool {
        matches(&parse(f).unwrap(), &thing())
    }

    #[test]
    fn comparisons_logic_and_arithmetic() {
        assert!(holds("name eq '158324'"));
        assert!(holds("result gt 40 and result lt 43"));
        assert!(holds("not (result lt 40) and (result ge 42.5 or false)"));
        assert!(holds("result sub 2.5 eq 40"));
        assert!(holds("result mul 2 eq 85 and -result lt 0"));
        assert!(!holds("result ne 42.5"));
        assert!(holds("properties/area eq 'O''Brien Square'"));
        assert!(holds("missing eq null"));
        assert!(!holds("missing gt 1"), "null compares to nothing");
    }

    #[test]
    fn strings_times_and_functions() {
        assert!(holds("substringof('Brien', properties/area)"));
        assert!(holds(
            "contains(properties/area, 'Square') and startswith(name, '158')"
        ));
        assert!(holds("endswith(name, '324') and length(name) eq 6"));
        assert!(holds(
            "tolower(properties/type) eq 'traffic' and toupper(name) eq '158324'"
        ));
        assert!(holds("phenomenonTime gt 2026-03-01T12:00:00Z"));
        assert!(holds("phenomenonTime lt 2026-03-01T14:00:00+01:00"));
        assert!(holds(
            "phenomenonTime ge 2026-03-01 and year(phenomenonTime) eq 2026"
        ));
        assert!(holds(
            "hour(phenomenonTime) eq 12 and minute(phenomenonTime) eq 30"
        ));
        assert!(holds(
            "round(result) eq 43 and floor(result) eq 42 and ceiling(result) eq 43"
        ));
    }

    #[test]
    fn geometry_through_a_to_many_navigation() {
        assert!(holds(
            "geo.intersects(Locations/location, geography'POLYGON((10 56, 11 56, 11 57, 10 57, 10 56))')"
        ));
        assert!(holds(
            "st_within(Locations/location, geometry'POLYGON((10 56, 11 56, 11 57, 10 57, 10 56))')"
        ));
        assert!(!holds(
            "st_within(Locations/location, geography'POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))')"
        ));
        assert!(holds(
            "geo.distance(Locations/location, geography'POINT(10.2 56.25)') lt 0.11"
        ));
        assert!(!holds(
            "geo.distance(Locations/location, geography'POINT(10.2 56.25)') lt 0.09"
        ));
    }

    #[test]
    fn bad_filters_are_refused_with_where_and_why() {
        for (bad, says) in [
            ("name eq", "ends too early"),
            ("name eq 'x", "no closing quote"),
            ("frobnicate(name)", "unknown function"),
            ("substringof('x')", "takes 2 argument"),
            ("(name eq 'x'", "expected ')'"),
            ("name eq 'x' 'y'", "unexpected the literal"),
            ("name # 1", "unexpected '#'"),
            (
                "geo.intersects(x, geography'LINESTRING(0 0, 1 1)')",
                "only POINT",
            ),
            ("a/(b)", "after '/'"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("$filter: ") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn hostile_depth_and_size_are_refused_not_overflowed() {
        let deep = format!(
            "{}name eq 'x'{}",
            "(".repeat(100_000 / 2),
            ")".repeat(100_000 / 2)
        );
        assert!(
            parse(&deep).unwrap_err().contains("limit"),
            "too long first"
        );
        let deep = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse(&deep).unwrap_err().contains("deeper than"));
        let nots = format!("{}true", "not ".repeat(1000));
        assert!(parse(&nots).unwrap_err().contains("deeper than"));
        let minus = format!("{}1 eq 1", "- ".repeat(1000));
        assert!(parse(&minus).unwrap_err().contains("deeper than"));
        let calls = format!("{}'x'{}", "tolower(".repeat(200), ")".repeat(200));
        assert!(parse(&calls).unwrap_err().contains("deeper than"));
        // Long flat chains are fine up to the operator limit (evaluation recurses through them).
        let chain = vec!["result gt 1"; 100].join(" and ");
        assert!(holds(&chain));
        let chain = vec!["result gt 1"; 1000].join(" and ");
        assert!(parse(&chain).unwrap_err().contains("operators"));
        // Within the limits, nesting works.
        assert!(holds(&format!("{}true{}", "(".repeat(10), ")".repeat(10))));
    }
}
