//! SensorThings query options: `$top`, `$skip`, `$count`, `$orderby`, `$select`, `$expand`
//! (with nested options, `Datastreams($top=1;$expand=Observations)` or
//! `Datastreams/ObservedProperty`) and `$filter` ([`super::filter`]).

use super::filter::{self, Expr};

/// Entities in a page when `$top` is not given.
pub const DEFAULT_TOP: usize = 100;
/// Most entities in a page.
pub const MAX_TOP: usize = 1000;
/// Deepest `$expand` nesting.
pub const MAX_EXPAND_DEPTH: usize = 4;
/// Most `$expand` items at one level, `$orderby` keys and `$select` names.
pub const MAX_ITEMS: usize = 32;

/// The options of one request (or of one expanded navigation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// `$top`, capped at [`MAX_TOP`].
    pub top: Option<usize>,
    /// `$skip`.
    pub skip: usize,
    /// `$count=true`.
    pub count: bool,
    /// `$filter`.
    pub filter: Option<Expr>,
    /// `$orderby`: paths, descending when true.
    pub orderby: Vec<(Vec<String>, bool)>,
    /// `$select`: property names (`id` stands for `@iot.id`).
    pub select: Option<Vec<String>>,
    /// `$expand`.
    pub expand: Vec<Expand>,
}

/// One expanded navigation property and its own options.
#[derive(Debug, Clone, PartialEq)]
pub struct Expand {
    /// The navigation property (`Datastreams`, `Thing`, ...).
    pub nav: String,
    /// Options applied to it.
    pub options: Options,
}

impl Options {
    /// The page size.
    pub fn page(&self) -> usize {
        self.top.unwrap_or(DEFAULT_TOP).min(MAX_TOP)
    }

    /// Parses the `$` options of decoded query parameters; others (`token`) are passed over.
    pub fn parse<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut o = Options::default();
        for (k, v) in params {
            if k.starts_with('$') {
                o.set(k, v, 0)?;
            }
        }
        Ok(o)
    }

    fn set(&mut self, key: &str, value: &str, depth: usize) -> Result<(), String> {
        let number = |what: &str| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("{what} must be a whole number of entities, got {value:?}"))
        };
        match key {
            "$top" => self.top = Some(number("$top")?.min(MAX_TOP)),
            "$skip" => self.skip = number("$skip")?,
            "$count" => {
                self.count = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("$count must be true or false, got {value:?}")),
                }
            }
            "$filter" => self.filter = Some(filter::parse(value)?),
            "$orderby" => {
                self.orderby = split_top(value, ',')?
                    .into_iter()
                    .map(|item| {
                        let mut words = item.split_whitespace();
                        let path = words.next().ok_or("an empty $orderby item")?;
                        let desc = match words.next().map(str::to_ascii_lowercase).as_deref() {
                            None | Some("asc") => false,
                            Some("desc") => true,
                            Some(other) => {
                                return Err(format!(
                                    "$orderby: {other:?} after {path:?} is neither asc nor desc"
                                ))
                            }
                        };
                        Ok((path.split('/').map(str::to_string).collect(), desc))
                    })
                    .collect::<Result<_, String>>()?;
                if self.orderby.len() > MAX_ITEMS {
                    return Err(format!("$orderby may name at most {MAX_ITEMS} properties"));
                }
            }
            "$select" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if names.len() > MAX_ITEMS {
                    return Err(format!("$select may name at most {MAX_ITEMS} properties"));
                }
                self.select = Some(names);
            }
            "$expand" => {
                if depth >= MAX_EXPAND_DEPTH {
                    return Err(format!(
                        "$expand nests deeper than {MAX_EXPAND_DEPTH} levels"
                    ));
                }
                let items = split_top(value, ',')?;
                if items.len() > MAX_ITEMS {
                    return Err(format!(
                        "$expand may name at most {MAX_ITEMS} navigation properties"
                    ));
                }
                for item in items {
                    let e = expand_item(&item, depth + 1)?;
                    self.expand.push(e);
                }
            }
            "$resultFormat" | "$format" => {
                return Err(format!("{key} is not supported; answers are JSON"))
            }
            other => return Err(format!("unknown query option {other:?}")),
        }
        Ok(())
    }
}

/// `Nav(opts)` or `Nav/Nav2(opts)`.
fn expand_item(item: &str, depth: usize) -> Result<Expand, String> {
    let item = item.trim();
    let (path, opts) = match item.find('(') {
        Some(open) => {
            let inner = item[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| format!("$expand item {item:?} does not end with ')'"))?;
            (&item[..open], Some(inner))
        }
        None => (item, None),
    };
    let navs: Vec<&str> = path.split('/').map(str::trim).collect();
    if navs.iter().any(|n| n.is_empty()) || navs.len() > MAX_EXPAND_DEPTH {
        return Err(format!("$expand item {item:?} is not a navigation path"));
    }
    let mut options = Options::default();
    if let Some(inner) = opts {
        for part in split_top(inner, ';')? {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("$expand option {part:?} has no '='"))?;
            options.set(k.trim(), v, depth + navs.len() - 1)?;
        }
    }
    // `A/B(opts)` is `A($expand=B(opts))`.
    let mut e = Expand {
        nav: navs[navs.len() - 1].to_string(),
        options,
    };
    for nav in navs[..navs.len() - 1].iter().rev() {
        e = Expand {
            nav: nav.to_string(),
            options: Options {
                expand: vec![e],
                ..Options::default()
            },
        };
    }
    Ok(e)
}

/// Splits at `sep` outside parentheses and quotes.
fn split_top(text: &str, sep: char) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut cur = String::new();
    for c in text.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in {text:?}"))?
            }
            c if c == sep && depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if depth != 0 || quoted {
        return Err(format!("unbalanced parentheses or quotes in {text:?}"));
    }
    out.push(cur);
    Ok(out.into_iter().filter(|s| !s.trim().is_empty()).collect())
}

/// Decodes `%XX` and `+` of a query component.
pub fn decode_component(s: &str) -> String {
    percent_decode(s, true)
}

/// Decodes `%XX` (an invalid escape stays as written), and `+` as a space when `plus` (query
/// components; a path keeps its `+`). Bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(s: &str, plus: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `key=value` pairs of a query string.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts(q: &str) -> Result<Options, String> {
        let p = pairs(q);
        Options::parse(p.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    #[test]
    fn options_and_nested_expands() {
        let o = opts("$top=5&$skip=10&$count=true&$orderby=properties/area%20desc,name&$select=id,name&token=x").unwrap();
        assert_eq!((o.top, o.skip, o.count), (Some(5), 10, true));
        assert_eq!(
            o.orderby,
            vec![
                (vec!["properties".to_string(), "area".to_string()], true),
                (vec!["name".to_string()], false)
            ]
        );
        assert_eq!(o.select, Some(vec!["id".to_string(), "name".to_string()]));
        let o = opts("$expand=Datastreams($top=1;$expand=Observations($orderby=phenomenonTime desc;$top=2)),Locations").unwrap();
        assert_eq!(o.expand.len(), 2);
        assert_eq!(o.expand[0].nav, "Datastreams");
        assert_eq!(o.expand[0].options.top, Some(1));
        let obs = &o.expand[0].options.expand[0];
        assert_eq!(
            (obs.nav.as_str(), obs.options.top),
            ("Observations", Some(2))
        );
        let o = opts("$expand=Datastreams/ObservedProperty").unwrap();
        assert_eq!(o.expand[0].options.expand[0].nav, "ObservedProperty");
        assert_eq!(opts("$top=5000").unwrap().page(), MAX_TOP);
        assert_eq!(opts("").unwrap().page(), DEFAULT_TOP);
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        for (q, says) in [
            ("$top=-1", "whole number"),
            ("$count=yes", "true or false"),
            ("$orderby=name%20sideways", "neither asc nor desc"),
            ("$expand=Datastreams($top=1", "unbalanced"),
            (
                "$expand=A($expand=B($expand=C($expand=D($expand=E))))",
                "deeper than",
            ),
            ("$frobnicate=1", "unknown query option"),
            ("$filter=name%20eq", "$filter"),
        ] {
            let e = opts(q).unwrap_err();
            assert!(e.contains(says), "{q}: {e}");
        }
    }
}
