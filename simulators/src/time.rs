//! Event-time helpers: the city's time zone and the CityPulse timestamp formats.
//!
//! Simulated time is kept in UTC; payloads carry Europe/Copenhagen local time without a zone,
//! as the CityPulse Aarhus files do, and the ground truth carries UTC RFC 3339.

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Europe::Copenhagen;

use crate::error::{Error, Result};

/// Local time of day in hours (0.0..24.0) in Aarhus, the clock that drives the daily patterns.
pub fn local_hour(t: DateTime<Utc>) -> f64 {
    let local = t.with_timezone(&Copenhagen);
    f64::from(local.hour()) + f64::from(local.minute()) / 60.0 + f64::from(local.second()) / 3600.0
}

/// Whether `t` falls on a Saturday or Sunday in Aarhus.
pub fn is_weekend(t: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    let local = t.with_timezone(&Copenhagen);
    local.weekday().number_from_monday() >= 6
}

/// Formats `t` as Aarhus local time with `fmt` (a chrono format string).
pub fn local(t: DateTime<Utc>, fmt: &str) -> String {
    t.with_timezone(&Copenhagen).format(fmt).to_string()
}

/// `2014-08-01T07:50:00`, the traffic and weather `TIMESTAMP` format.
pub const ISO_LOCAL: &str = "%Y-%m-%dT%H:%M:%S";
/// `2014-08-01 00:05:00`, the pollution `timestamp` and parking `streamtime` format.
pub const SPACE_LOCAL: &str = "%Y-%m-%d %H:%M:%S";
/// `2014-05-22 09:09:04.145`, the parking `updatetime` format.
pub const SPACE_LOCAL_MS: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// UTC RFC 3339 with a `Z`, as written to the ground truth.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Parses a time given either as RFC 3339 (with an offset) or as Aarhus local time without a
/// zone (`2014-08-01T08:00:00`, `2014-08-01 08:00:00`, optional fractional seconds).
///
/// A local time that does not exist (spring forward) is an error; one that exists twice
/// (fall back) takes the earlier instant.
pub fn parse_time(input: &str) -> Result<DateTime<Utc>> {
    let s = input.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = parse_naive(s).ok_or_else(|| Error::Time {
        input: input.to_owned(),
    })?;
    Copenhagen
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| Error::Time {
            input: input.to_owned(),
        })
}

/// Parses the zone-less timestamp formats found in the CityPulse files.
pub fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s.trim(), f).ok())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// Parses a CityPulse local timestamp into UTC (see [`parse_time`] for the DST rule).
pub fn parse_local(s: &str) -> Option<DateTime<Utc>> {
    let naive = parse_naive(s)?;
    Copenhagen
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// Parses a duration such as `10m`, `1h 30m` or `1d` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        Error::Invalid(format!(
            "cannot parse duration {s:?}: {e} (try 10m, 1h, 1d)"
        ))
    })?;
    chrono::Duration::from_std(d).map_err(|_| Error::Invalid(format!("duration {s:?} is too long")))
}

/// Parses a signed duration: like [`parse_duration`] with an optional leading `-`.
pub fn parse_signed_duration(s: &str) -> Result<chrono::Duration> {
    match s.trim().strip_prefix('-') {
        Some(rest) => Ok(-parse_duration(rest)?),
        None => parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_summer_time_is_two_hours_ahead_of_utc() -> Result<()> {
        let t = parse_time("2014-08-01T00:00:00")?;
        assert_eq!(rfc3339(t), "2014-07-31T22:00:00Z");
        assert_eq!(local(t, ISO_LOCAL), "2014-08-01T00:00:00");
        assert_eq!(parse_time("2014-08-01T00:00:00+02:00")?, t);
        assert_eq!(parse_local("2014-08-01 00:00:00.000"), Some(t));
        Ok(())
    }

    #[test]
    fn parking_updatetime_keeps_milliseconds() -> Result<()> {
        let t = parse_time("2014-05-22 09:09:04.145")?;
        assert_eq!(local(t, SPACE_LOCAL_MS), "2014-05-22 09:09:04.145");
        Ok(())
    }

    #[test]
    fn bad_time_is_an_error() {
        assert!(parse_time("yesterday").is_err());
        assert!(parse_signed_duration("-1h").is_ok_and(|d| d == -chrono::Duration::hours(1)));
    }
}
