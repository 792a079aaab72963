//! `aqyl events tail`: incidents as they happen, one readable line each, for an operator's
//! terminal. Subscribes to `<prefix>/events/<type or +>/#` on the configured broker.

use aqyl_connect::Connector;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::io::Write;
use std::time::Duration;

/// One event payload as a line: time, state, type, subject, level, message.
pub fn format_event(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let time = s("time").replace('T', " ");
    let time = time.trim_end_matches('Z').trim_end_matches(".000");
    Some(format!(
        "{time}  {:<6} {:<16} {:<14} {:<9} {}",
        s("state").to_uppercase(),
        s("event_type"),
        s("subject"),
        s("level"),
        s("message")
    ))
}

/// A client subscribed to `filter` on the broker (the subscription acknowledged), for the
/// operator commands. `name` goes into the client id. A broker that cannot be reached, or
/// that refuses the connection, is an error at once, saying what to fix.
pub async fn subscribe(
    broker: &Connector,
    name: &str,
    filter: &str,
    qos: QoS,
) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let mut opts = broker.options(format!("aqyl-{name}-{}", std::process::id()));
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client.subscribe(filter, qos).await?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => return Ok((client, eventloop)),
            Ok(_) => {}
            Err(e) => anyhow::bail!("{}", broker.explain(&e)),
        }
    }
}

/// Prints incidents until Ctrl-C. `event_type` narrows to one type; `json` prints payloads.
pub async fn run(
    broker: &Connector,
    prefix: &str,
    event_type: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let filter = format!("{prefix}/events/{}/#", event_type.unwrap_or("+"));
    // Say "listening" only once the broker has the subscription.
    let (_client, mut eventloop) = subscribe(broker, "tail", &filter, QoS::AtLeastOnce).await?;
    eprintln!(
        "Listening on {filter} at {} (Ctrl-C stops).",
        broker.address()
    );
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let line = if json { Some(String::from_utf8_lossy(&p.payload).into_owned()) } else { format_event(&p.payload) };
                    if let Some(line) = line {
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}; retrying.", broker.explain(&e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line() {
        let e = br#"{"id":"x","event_type":"congestion","subject":"158324","state":"start","level":"warning","time":"2014-08-01T05:00:00.000Z","message":"Congestion on segment 158324: 20 km/h"}"#;
        assert_eq!(
            format_event(e).unwrap(),
            "2014-08-01 05:00:00  START  congestion       158324         warning   Congestion on segment 158324: 20 km/h"
        );
        assert_eq!(format_event(b"not json"), None);
    }
}
