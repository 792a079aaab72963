//! How records leave Aqyl: the store's line protocol ([`line_protocol`]), and the encodings
//! every output shares, one MQTT topic level per subject ([`topic_level`]) and timestamps in
//! payloads ([`rfc3339_ms`]).
//!
//! The records themselves (aggregates, incidents, quality reports, dead letters) live with the
//! capability that makes them and write themselves out with these functions; the MQTT
//! publisher and the sinks are in `aqyl-mqtt` and `aqyl-sink`.

pub mod line_protocol;

/// Makes a subject usable as one MQTT topic level: `/`, `+`, `#` and `%` are
/// percent-encoded (sensor ids from topics never contain the first three; areas from payloads
/// might).
pub fn topic_level(subject: &str) -> std::borrow::Cow<'_, str> {
    if !subject.contains(['/', '+', '#', '%']) {
        return std::borrow::Cow::Borrowed(subject);
    }
    let mut out = String::with_capacity(subject.len() + 8);
    for c in subject.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_become_single_topic_levels() {
        assert_eq!(topic_level("158324"), "158324");
        assert_eq!(topic_level("north/east+#1%"), "north%2Feast%2B%231%25");
    }
}
