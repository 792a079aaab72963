//! Resource paths: `/Things('traffic%2F158324')/Datastreams`, percent-decoded first, then
//! split into segments, each a name with an optional id in parentheses: `'quoted'` (a
//! doubled quote is one quote; slashes and parentheses inside are part of the id) or bare.

use super::entities::quote_id;

/// Longest path accepted, bytes.
pub const MAX_LEN: usize = 8 * 1024;
/// Most segments.
pub const MAX_SEGMENTS: usize = 16;

/// One path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Set, navigation property or property name.
    pub name: String,
    /// The id in parentheses, unquoted.
    pub id: Option<String>,
}

/// Parses the path after `/v1.1` (still percent-encoded).
pub fn parse(raw: &str) -> Result<Vec<Segment>, String> {
    if raw.len() > MAX_LEN {
        return Err(format!("the path is longer than {MAX_LEN} bytes"));
    }
    let text = super::query::percent_decode(raw, false);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '/' {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] != '/' && chars[i] != '(' {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let mut id = None;
        if i < chars.len() && chars[i] == '(' {
            i += 1;
            let mut value = String::new();
            if chars.get(i) == Some(&'\'') {
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("the id of {name} has no closing quote")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            value.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            value.push(*c);
                            i += 1;
                        }
                    }
                }
            } else {
                while i < chars.len() && chars[i] != ')' {
                    value.push(chars[i]);
                    i += 1;
                }
            }
            if chars.get(i) != Some(&')') {
                return Err(format!("the id of {name} is not closed with ')'"));
            }
            i += 1;
            if i < chars.len() && chars[i] != '/' {
                return Err(format!("unexpected text after {name}({value})"));
            }
            id = Some(value);
        }
        if name.is_empty() {
            return Err("an empty path segment before '('".into());
        }
        out.push(Segment { name, id });
        if out.len() > MAX_SEGMENTS {
            return Err(format!("the path has more than {MAX_SEGMENTS} segments"));
        }
    }
    Ok(out)
}

/// The path of segments as Aqyl writes it (ids quoted and encoded).
pub fn canonical(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| match &s.id {
            Some(id) => format!("/{}({})", s.name, quote_id(id)),
            None => format!("/{}", s.name),
        })
        .collect()
}

/// A query component percent-encoded (all but unreserved characters and `$`).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'$') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seg(name: &str, id: Option<&str>) -> Segment {
        Segment {
            name: name.into(),
            id: id.map(str::to_string),
        }
    }

    #[test]
    fn quoted_ids_hold_anything() {
        assert_eq!(
            parse("/Things('traffic%2F15/8(3)''x')/Datastreams").unwrap(),
            vec![
                seg("Things", Some("traffic/15/8(3)'x")),
                seg("Datastreams", None)
            ]
        );
        assert_eq!(
            parse("/Things(42)").unwrap(),
            vec![seg("Things", Some("42"))]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("/").unwrap(), vec![]);
        let hostile = "traffic/a b'c%d/é";
        let back = parse(&canonical(&[seg("Things", Some(hostile))])).unwrap();
        assert_eq!(back, vec![seg("Things", Some(hostile))]);
    }

    #[test]
    fn broken_paths_are_refused() {
        for (bad, says) in [
            ("/Things('x", "no closing quote"),
            ("/Things('x'", "not closed"),
            ("/Things('x')y", "unexpected text"),
            ("/('x')", "empty path segment"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse(&"/a".repeat(20)).is_err());
    }
}
