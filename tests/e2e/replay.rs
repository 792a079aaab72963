//! Replay of a small generated CityPulse-format traffic file (the `aqyl-sim replay` reader)
//! through the dataflow with the shipped traffic descriptor: the SAX words of known 4-hour
//! windows, worked out by hand.

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::RawMessage;
use aqyl_dataflow::{run_batch, PipelineSpec};
use aqyl_sim::replay::{discover, Replay, ReplayOptions};
use aqyl_sim::sensors::SensorType as SimType;
use std::fmt::Write;
use std::time::Duration;

#[test]
fn replayed_citypulse_rows_give_the_hand_worked_sax_words() {
    // 96 rows, one every 5 minutes from 02:00 Copenhagen time (00:00 UTC): two 4-hour windows.
    // Speed: 30, 50, 70 in three blocks of 16 rows, then 70, 30, 70. Count: always 5.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("traffic")).unwrap();
    let mut csv = String::from("status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID\n");
    for i in 0..96u32 {
        let speed = match i / 16 {
            0 | 4 => 30,
            1 => 50,
            _ => 70,
        };
        let minutes = 120 + 5 * i;
        let ts = format!("2014-08-01T{:02}:{:02}:00", minutes / 60, minutes % 60);
        writeln!(csv, "OK,60,{speed},668,60,{ts},5,{},158324", 1000 + i).unwrap();
    }
    std::fs::write(dir.path().join("traffic/AarhusTrafficData158324.csv"), csv).unwrap();

    let files = discover(dir.path(), &[SimType::Traffic]).unwrap();
    let messages: Vec<RawMessage> = Replay::open(files, ReplayOptions::default())
        .unwrap()
        .map(|m| {
            let m = m.unwrap();
            RawMessage {
                topic: m.topic.clone(),
                payload: m.encode(None),
                received_at: 0,
            }
        })
        .collect();
    assert_eq!(messages.len(), 96);
    assert_eq!(messages[0].topic, "city/traffic/158324");

    let descriptor = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/sensors/traffic.toml"
    ))
    .unwrap();
    let traffic = SensorType::from_toml(std::path::Path::new("traffic.toml"), &descriptor).unwrap();
    let spec = PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(Registry::new(vec![traffic])),
        workers: 2,
        window: Duration::from_secs(300),
        allowed_lateness: Duration::from_secs(600),
        idle_timeout: None,
        max_payload_bytes: 65536,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        quality: None,
        rules: Default::default(),
    };
    let (aggs, dead) = run_batch(spec, messages).unwrap().sorted();
    assert!(dead.is_empty(), "{dead:?}");
    let word = |field: &str, end_utc_hour: u64| {
        let end = 1_406_851_200_000 + end_utc_hour * 3_600_000;
        let a = aggs
            .iter()
            .find(|a| &*a.window == "4h" && &*a.field == field && a.end == end)
            .unwrap_or_else(|| panic!("no 4h window of {field} ending {end_utc_hour}:00"));
        assert_eq!(a.stats.count, 48);
        (a.sax.clone().unwrap(), a.sax_code.unwrap())
    };
    // 30/50/70: mean 50, population stddev sqrt(2·16·400/48) = 16.33; segment z-means
    // −1.22, 0, +1.22 → below −0.8416 'a', between ±0.2533 'c', above 0.8416 'e'.
    assert_eq!(word("avgSpeed", 4), ("ace".into(), 14));
    // 70/30/70: mean 56.67, stddev 18.86; z-means +0.71, −1.41, +0.71 → 'd', 'a', 'd'.
    assert_eq!(word("avgSpeed", 8), ("dad".into(), 3 * 25 + 3));
    // A constant count is flat: the middle letter.
    assert_eq!(word("vehicleCount", 4), ("ccc".into(), 2 * 25 + 2 * 5 + 2));
    // The 5-minute windows hold one row each.
    assert_eq!(
        aggs.iter()
            .filter(|a| &*a.window == "5m" && &*a.field == "avgSpeed")
            .count(),
        96
    );
}
