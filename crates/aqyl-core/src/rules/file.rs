//! Rule files: `config/rules/*.toml`, parsed and checked against the sensor types.

use super::expr::{CmpOp, Expr};
use super::state::{RATE_SUFFIX, Z_SUFFIX};

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
    /// Sequence rules: the first step and what must not happen in between.
    pub sequence: Option<SequenceSteps>,
    /// `None`: the rule reads each reading. `Some(label)`: it reads each closed window of that
    /// label of each sensor, with fields `<field>_<statistic>` (`avgSpeed_mean`).
    pub window: Option<String>,
    /// Absence rules with `per = "area"`: silence of a whole area (no reading from any of
    /// its sensors), with the area as subject.
    pub per_area: bool,
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
    /// `first`, then `then` (kept in `enter`) within `within_ms`, without `unless` in
    /// between, starts an incident; `exit` ends it.
    Sequence {
        /// Longest time between the two steps.
        within_ms: u64,
    },
}

/// What a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Each sensor's readings.
    Readings,
    /// Each sensor's closed windows of this label.
    Window(&'a str),
    /// Each area's readings (the readings of all its sensors), for area silences.
    Area,
}

impl Rule {
    /// What the rule reads.
    pub fn input(&self) -> Input<'_> {
        match (&self.window, self.per_area) {
            (_, true) => Input::Area,
            (Some(w), false) => Input::Window(w),
            (None, false) => Input::Readings,
        }
    }
}

/// The steps of a sequence rule besides the last one (`then`, kept in [`Rule::enter`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSteps {
    /// The first step.
    pub first: Expr,
    /// What cancels a started sequence.
    pub unless: Option<Expr>,
}

impl Rule {
    /// Every condition of the rule (enter, exit, levels, sequence steps).
    pub fn conditions(&self) -> impl Iterator<Item = &Expr> {
        let steps = self
            .sequence
            .iter()
            .flat_map(|s| [Some(&s.first), s.unless.as_ref()]);
        [&self.enter, &self.exit]
            .into_iter()
            .chain(self.levels.iter().map(|(_, e)| e))
            .chain(steps.flatten())
    }

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
    /// Read by [`super::corroborate`]; here only allowed.
    #[serde(default, rename = "corroborate")]
    _corroborate: Vec<toml::Value>,
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
    /// Sequence rules: the first step, the second, the time between, what cancels.
    first: Option<toml::Spanned<String>>,
    then: Option<toml::Spanned<String>>,
    within: Option<toml::Spanned<String>>,
    unless: Option<toml::Spanned<String>>,
    /// Rules over closed windows: the window label.
    window: Option<toml::Spanned<String>>,
    /// Absence rules: `"sensor"` (default) or `"area"`.
    per: Option<toml::Spanned<String>>,
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

/// A level's condition as written.
fn when_text(r: &RuleFile, level: &str) -> String {
    r.levels
        .iter()
        .flatten()
        .find(|l| l.name == level)
        .map(|l| l.when.get_ref().clone())
        .unwrap_or_default()
}

fn default_level() -> String {
    "warning".into()
}

/// Parses one rules file, checking each rule against the sensor types (their fields).
pub fn parse_rules(
    path: &std::path::Path,
    text: &str,
    types: &[crate::ingest::descriptor::SensorType],
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
        if let Some(w) = &r.window {
            let labels: Vec<&str> = ty.windows.iter().map(|s| &**s.label()).collect();
            if !labels.is_empty() && !labels.contains(&w.get_ref().as_str()) {
                errors.push(at(
                    w.span().start,
                    format!(
                        "rule {:?} reads window {:?}, which sensor type {:?} does not compute; its windows: {}",
                        r.name,
                        w.get_ref(),
                        ty.name,
                        labels.join(", ")
                    ),
                ));
                continue;
            }
        }
        let window = r.window.as_ref().map(|w| w.get_ref().as_str());
        let mut parse = |src: &toml::Spanned<String>, what: &str| -> Option<Expr> {
            match Expr::parse(src.get_ref()) {
                Ok(e) => {
                    for f in e.fields() {
                        let base = f
                            .strip_suffix(RATE_SUFFIX)
                            .or_else(|| f.strip_suffix(Z_SUFFIX))
                            .unwrap_or(f);
                        let declared = |name: &str| ty.fields.iter().any(|g| &*g.name == name);
                        let known = match window {
                            None => declared(base),
                            Some(_) => crate::windows::window::STATISTICS.iter().any(|stat| {
                                base.strip_suffix(stat)
                                    .and_then(|b| b.strip_suffix('_'))
                                    .is_some_and(declared)
                            }),
                        };
                        if !known {
                            let hint = match window {
                                None => String::new(),
                                Some(w) => format!(" (a rule over {w} windows reads <field>_<statistic>, statistic one of {})", crate::windows::window::STATISTICS.join(", ")),
                            };
                            errors.push(at(src.span().start, format!("{what} of rule {:?} reads {f:?}, which sensor type {:?} does not declare{hint}", r.name, ty.name)));
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
                        o.name == name
                            && !o.per_area
                            && o.window.is_none()
                            && !matches!(o.kind, RuleKind::Area { .. })
                    })
                });
                match (of, r.at_least) {
                    (Some(of), Some(at_least)) if at_least >= 1 => RuleKind::Area { of, at_least },
                    _ => {
                        errors.push(at(
                            span.start,
                            format!("area rule {:?} needs of = \"<a rule over sensor readings defined above in this file>\" and at_least = <n ≥ 1>", r.name),
                        ));
                        continue;
                    }
                }
            }
            Some(("sequence", span)) => {
                let within = r
                    .within
                    .as_ref()
                    .map(|w| crate::duration::parse(w.get_ref()));
                match (&r.first, &r.then, within) {
                    (Some(_), Some(_), Some(Ok(d))) => RuleKind::Sequence {
                        within_ms: d.as_millis() as u64,
                    },
                    (_, _, Some(Err(e))) => {
                        let w = r.within.as_ref().map_or(span.start, |w| w.span().start);
                        errors.push(at(w, e));
                        continue;
                    }
                    _ => {
                        errors.push(at(
                            span.start,
                            format!("sequence rule {:?} needs first = \"<condition>\", then = \"<condition>\" and within = \"<duration>\" (unless = \"<condition>\" is optional)", r.name),
                        ));
                        continue;
                    }
                }
            }
            Some((other, span)) => {
                errors.push(at(
                    span.start,
                    format!("rule kind {other:?} is not known; use \"threshold\", \"absence\", \"level\", \"sequence\" or \"area\""),
                ));
                continue;
            }
        };
        if !matches!(kind, RuleKind::Sequence { .. }) {
            if let Some(extra) = [&r.first, &r.then, &r.within, &r.unless]
                .into_iter()
                .flatten()
                .next()
            {
                errors.push(at(
                    extra.span().start,
                    format!("rule {:?}: first/then/within/unless belong to sequence rules (kind = \"sequence\")", r.name),
                ));
                continue;
            }
        }
        let per_area = match (
            r.per.as_ref().map(|p| (p.get_ref().as_str(), p.span())),
            kind,
        ) {
            (None | Some(("sensor", _)), _) => false,
            (Some(("area", _)), RuleKind::Absence) => true,
            (Some((other, span)), _) => {
                errors.push(at(
                    span.start,
                    format!("rule {:?}: per = {other:?} is not possible; absence rules take per = \"sensor\" (default) or per = \"area\"", r.name),
                ));
                continue;
            }
        };
        if let (Some(w), RuleKind::Absence | RuleKind::Area { .. }) = (&r.window, kind) {
            errors.push(at(
                w.span().start,
                format!(
                    "rule {:?}: window = ... applies to threshold, level and sequence rules only",
                    r.name
                ),
            ));
            continue;
        }
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
            (RuleKind::Sequence { .. }, Some(e)) => {
                errors.push(at(
                    e.span().start,
                    format!("sequence rule {:?} takes first/then, not enter", r.name),
                ));
                continue;
            }
            (RuleKind::Sequence { .. }, None) => {
                let then = r.then.as_ref().and_then(|t| parse(t, "then"));
                let exit = match &r.exit {
                    Some(x) => parse(x, "exit"),
                    None => then.clone().map(|e| Expr::Not(Box::new(e))),
                };
                (then, exit)
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
        let sequence = match (&r.first, kind) {
            (Some(first), RuleKind::Sequence { .. }) => {
                let unless = r.unless.as_ref().map(|u| parse(u, "unless"));
                match (parse(first, "first"), unless) {
                    (Some(first), None) => Some(SequenceSteps {
                        first,
                        unless: None,
                    }),
                    (Some(first), Some(Some(u))) => Some(SequenceSteps {
                        first,
                        unless: Some(u),
                    }),
                    _ => continue,
                }
            }
            _ => None,
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
                    (RuleKind::Sequence { within_ms }, None) => format!(
                        "{} then {} within {}{}",
                        r.first.as_ref().map_or("", |f| f.get_ref()),
                        r.then.as_ref().map_or("", |t| t.get_ref()),
                        crate::duration::label(std::time::Duration::from_millis(within_ms)),
                        r.unless
                            .as_ref()
                            .map_or(String::new(), |u| format!(" unless {}", u.get_ref()))
                    ),
                    (RuleKind::Level, None) => levels
                        .iter()
                        .map(|(name, _)| format!("{name} if {}", when_text(r, name)))
                        .collect::<Vec<_>>()
                        .join("; "),
                    _ => format!(
                        "no reading{} for {}",
                        if per_area {
                            " from any sensor of an area"
                        } else {
                            ""
                        },
                        crate::duration::label(std::time::Duration::from_millis(for_ms))
                    ),
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
                sequence,
                window: r.window.as_ref().map(|w| w.get_ref().clone()),
                per_area,
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
    types: &[crate::ingest::descriptor::SensorType],
) -> Result<Vec<Rule>, crate::ConfigErrors> {
    let (mut rules, mut errors) = (Vec::new(), Vec::new());
    for (path, text) in crate::error::toml_files(dir) {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
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

    fn traffic() -> Vec<crate::ingest::descriptor::SensorType> {
        let text = "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n[[fields]]\nname = \"vehicleCount\"\n";
        vec![crate::ingest::descriptor::SensorType::from_toml(Path::new("t.toml"), text).unwrap()]
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
