//! Detection quality: the simulator's default scenario (a day in Aarhus with two area
//! congestions, a full garage and a sensor outage, ground truth known) through the dataflow with the shipped
//! descriptors and rules, scored by `aqyl-sim`'s scorer.

use aqyl_core::decode::Registry;
use aqyl_core::RawMessage;
use aqyl_dataflow::{run_batch, PipelineSpec};
use aqyl_sim::scenario::Scenario;
use aqyl_sim::sensors::{CityConfig, SensorType};
use aqyl_sim::simulation::{SimConfig, Simulation};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_default_scenario_is_detected_with_full_precision_and_recall() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let loaded = aqyl_core::config::load(&repo.join("config/aqyl.toml"), |_| None).unwrap();
    let scenario = Scenario::load(&repo.join("simulators/scenarios/default.toml")).unwrap();
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let city = CityConfig {
        sensors: 10,
        areas: 5,
        types: vec![SensorType::Traffic, SensorType::Parking],
    };
    let config =
        SimConfig::new(city, start, chrono::Duration::days(1), 42).with_scenario(&scenario);
    let (messages, truth) = Simulation::generate(config).unwrap();
    let raw: Vec<RawMessage> = messages
        .iter()
        .map(|m| RawMessage {
            topic: m.topic.clone(),
            payload: m.encode(None),
            received_at: 0,
        })
        .collect();

    for workers in [1, 3] {
        let spec = PipelineSpec {
            registry: aqyl_dataflow::shared(Registry::new(loaded.sensor_types.clone())),
            workers,
            window: Duration::from_secs(300),
            allowed_lateness: Duration::from_secs(600),
            idle_timeout: None,
            max_payload_bytes: 65536,
            update_horizon: None,
            rules: Arc::new(loaded.rules.clone()),
        };
        let batch = run_batch(spec, raw.clone()).unwrap();
        assert!(
            batch.deadletters.is_empty(),
            "{:?}",
            batch.deadletters.first()
        );
        let events: Vec<serde_json::Value> = batch
            .events
            .iter()
            .map(|e| serde_json::from_str(&e.to_json()).unwrap())
            .collect();
        let (detections, _) = aqyl_sim::score::detections(&events, &Default::default());
        let report =
            aqyl_sim::score::score(&truth, &detections, chrono::Duration::minutes(10), &[]);
        let by_type = |t: &str| {
            report
                .types
                .iter()
                .find(|s| s.incident_type == t)
                .unwrap_or_else(|| panic!("{t} scored"))
        };
        for t in ["congestion", "parking_full", "outage"] {
            let s = by_type(t);
            println!(
                "{workers} workers, {t}: precision {:.3}, recall {:.3}, mean delay {:?} s ({} incidents, {} events)",
                s.precision, s.recall, s.delay_mean_s, s.incidents, s.events
            );
            assert!(s.precision >= 0.98 && s.recall >= 0.98, "{t}: {s:?}");
        }
    }
}
