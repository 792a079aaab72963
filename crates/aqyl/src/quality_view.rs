//! `aqyl quality`: every sensor's latest quality report (retained on `<prefix>/quality/#`),
//! worst first, for an operator's terminal.

use rumqttc::{Event, Packet, QoS};
use std::collections::BTreeMap;
use std::time::Duration;

/// The reports as a table, lowest score first; with `below`, only scores under it.
pub fn table(reports: &[serde_json::Value], below: Option<f64>) -> String {
    let mut rows: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|r| r["score"].is_number())
        .filter(|r| below.is_none_or(|b| r["score"].as_f64().unwrap_or(0.0) < b))
        .collect();
    rows.sort_by(|a, b| {
        let score = |v: &serde_json::Value| v["score"].as_f64().unwrap_or(0.0);
        score(a)
            .total_cmp(&score(b))
            .then_with(|| a["sensor_id"].as_str().cmp(&b["sensor_id"].as_str()))
    });
    let mut out = format!(
        "{:<6} {:<10} {:<16} {:<24} {}\n",
        "score", "type", "sensor", "time", "problems"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let problems: Vec<&str> = r["problems"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p.as_str()).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<6.2} {:<10} {:<16} {:<24} {}\n",
            r["score"].as_f64().unwrap_or(0.0),
            s("sensor_type"),
            s("sensor_id"),
            s("time"),
            if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("; ")
            }
        ));
    }
    out
}

/// Collects the retained reports (until the broker has sent nothing for half a second, at
/// most 10 s) and prints them as a table, or as JSON lines with `json`.
pub async fn show(
    broker: &aqyl_connect::Connector,
    prefix: &str,
    below: Option<f64>,
    json: bool,
) -> anyhow::Result<()> {
    let filter = format!("{prefix}/quality/#");
    let (client, mut eventloop) =
        crate::tail::subscribe(broker, "quality", &filter, QoS::AtMostOnce).await?;
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let quiet = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            _ = quiet => break,
            _ = tokio::time::sleep_until(deadline) => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        latest.insert(p.topic.clone(), v);
                    }
                }
                Ok(_) => {}
                Err(e) => anyhow::bail!("lost the broker: {}", broker.explain(&e)),
            }
        }
    }
    let _ = client.disconnect().await;
    let reports: Vec<serde_json::Value> = latest.into_values().collect();
    if json {
        for r in &reports {
            println!("{r}");
        }
    } else if reports.is_empty() {
        eprintln!(
            "No quality report is retained under {filter}: is Aqyl running with [quality] enabled?"
        );
    } else {
        print!("{}", table(&reports, below));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_the_worst_first_and_says_why() {
        let reports: Vec<serde_json::Value> = [
            r#"{"sensor_id":"158324","sensor_type":"traffic","time":"2014-08-01T05:40:00.000Z","score":0.97,"problems":[]}"#,
            r#"{"sensor_id":"BRUUNS","sensor_type":"parking","time":"2014-08-01T08:13:42.186Z","score":0.48,"problems":["vehiclecount = 968 is above its maximum 953"]}"#,
        ]
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
        let t = table(&reports, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("score"));
        assert!(lines[1].starts_with("0.48   parking    BRUUNS"), "{t}");
        assert!(lines[1].ends_with("vehiclecount = 968 is above its maximum 953"));
        assert!(lines[2].ends_with(" ok"), "{t}");
        assert_eq!(table(&reports, Some(0.6)).lines().count(), 2);
    }
}
