//! The service's side of cluster mode (`[cluster]`): what changes for one process of a
//! cluster. The dataflow's side (connecting the processes, exchanging records, the shared
//! watermark) is `aqyl_dataflow::cluster`.
//!
//! - Each process has its own MQTT connections: the client id gets `-<process>`.
//! - It reads the sensor topics through the shared subscription `$share/<group>/...`, so the
//!   broker hands each message to one process; the dataflow then exchanges every reading to
//!   the worker of the cluster that owns its sensor.
//! - Process 0 speaks for the cluster on `<prefix>/status`; process `i > 0` reports on
//!   `<prefix>/cluster/<i>/status`, so the service's status does not flap between processes.
//! - The city services (live state, catalogue) run on process 0, which reads every reading
//!   for them on its tap connection.

use aqyl_core::config::Config;
use aqyl_dataflow::cluster::ClusterSpec;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// This process's place in the cluster, when `[cluster]` has more than one process.
pub fn spec(cfg: &Config) -> Option<ClusterSpec> {
    let c = &cfg.cluster;
    c.enabled().then(|| ClusterSpec {
        hosts: c.hosts.clone(),
        process: c.process,
        listen: c.listen_addr(),
        stop: Arc::new(AtomicBool::new(false)),
    })
}

/// The process's index in its cluster (0 outside one).
pub fn process(cfg: &Config) -> usize {
    if cfg.cluster.enabled() {
        cfg.cluster.process
    } else {
        0
    }
}

/// The MQTT client id: `mqtt.client_id` (or `default`), with `-<process>` in a cluster.
pub fn client_id(cfg: &Config, default: impl FnOnce() -> String) -> String {
    let base = cfg.mqtt.client_id.clone().unwrap_or_else(default);
    if cfg.cluster.enabled() {
        format!("{base}-{}", cfg.cluster.process)
    } else {
        base
    }
}

/// What goes before every ingest subscription: the shared subscription in a cluster, then
/// `mqtt.subscription_prefix`.
pub fn subscription_prefix(cfg: &Config) -> String {
    if cfg.cluster.enabled() {
        format!(
            "$share/{}/{}",
            cfg.cluster.group, cfg.mqtt.subscription_prefix
        )
    } else {
        cfg.mqtt.subscription_prefix.clone()
    }
}

/// The retained status topic this process keeps `online` (with `offline` as its will).
pub fn status_topic(cfg: &Config) -> String {
    let prefix = &cfg.outputs.topic_prefix;
    match process(cfg) {
        0 => format!("{prefix}/status"),
        i => format!("{prefix}/cluster/{i}/status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::from_toml(Path::new("aqyl.toml"), text).unwrap()
    }

    #[test]
    fn one_process_keeps_the_plain_names() {
        let c = config("");
        assert!(spec(&c).is_none());
        assert_eq!(client_id(&c, || "aqyl-h".into()), "aqyl-h");
        assert_eq!(subscription_prefix(&c), "");
        assert_eq!(status_topic(&c), "aqyl/status");
    }

    #[test]
    fn a_process_of_a_cluster_shares_the_subscription_and_names_itself() {
        let text = "[state]\ndurable = false\n[mqtt]\nsubscription_prefix = \"site/\"\n[cluster]\nhosts = [\"a:2101\", \"b:2101\"]\nprocess = 1\ngroup = \"city\"\n";
        let c = config(text);
        let s = spec(&c).unwrap();
        assert_eq!((s.process, s.listen.as_str()), (1, "0.0.0.0:2101"));
        assert_eq!(client_id(&c, || "aqyl-h".into()), "aqyl-h-1");
        assert_eq!(subscription_prefix(&c), "$share/city/site/");
        assert_eq!(status_topic(&c), "aqyl/cluster/1/status");
        let zero = config(&text.replace("process = 1", "process = 0"));
        assert_eq!(status_topic(&zero), "aqyl/status");
    }

    #[test]
    fn a_durable_cluster_is_accepted_and_a_hand_made_share_refused() {
        let text = "[cluster]\nhosts = [\"a:2101\", \"b:2101\"]\n";
        let c = config(text);
        assert!(c.state.durable && spec(&c).is_some());
        let text = "[mqtt]\nsubscription_prefix = \"$share/aqyl/\"\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aqyl.toml:2: mqtt.subscription_prefix starts with $share/"),
            "{err}"
        );
    }
}
