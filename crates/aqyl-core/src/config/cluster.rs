//! `[cluster]`: one dataflow over several processes (timely's cluster mode, run by
//! `aqyl-dataflow`). Every process is started with the same `hosts` list and its own
//! `process` index; the processes connect to one another, every sensor's state lives on one
//! worker of the cluster, and each process reads its share of the broker's messages through an
//! MQTT shared subscription.

use serde::Deserialize;

/// Most processes in one cluster.
pub const MAX_PROCESSES: usize = 64;

/// `[cluster]` (env `AQYL_CLUSTER_HOSTS`, `AQYL_CLUSTER_PROCESS`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// One `host:port` per process, the same list (in the same order) on every process. The
    /// processes exchange records over TCP on these ports. Empty or one entry: one process.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// This process's index in `hosts`, from 0.
    #[serde(default)]
    pub process: usize,
    /// Where this process listens for its peers (default: every interface, on the port of
    /// its own `hosts` entry), for hosts whose name does not resolve to a local address.
    #[serde(default)]
    pub listen: Option<String>,
    /// The MQTT shared-subscription group the processes read the sensor topics through
    /// (`$share/<group>/<topic>`): the broker hands each message to one of them.
    #[serde(default = "default_group")]
    pub group: String,
}

fn default_group() -> String {
    "aqyl".into()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            process: 0,
            listen: None,
            group: default_group(),
        }
    }
}

impl ClusterConfig {
    /// How many processes the cluster has (1 without `[cluster]`).
    pub fn processes(&self) -> usize {
        self.hosts.len().max(1)
    }

    /// Whether this runs as a cluster of more than one process.
    pub fn enabled(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The address this process listens on for its peers.
    pub fn listen_addr(&self) -> String {
        if let Some(l) = &self.listen {
            return l.clone();
        }
        let own = self.hosts.get(self.process).map_or("", String::as_str);
        let port = own.rsplit_once(':').map_or("", |(_, p)| p);
        format!("0.0.0.0:{port}")
    }

    /// Applies `AQYL_CLUSTER_HOSTS` (comma-separated `host:port`, empty: one process) and
    /// `AQYL_CLUSTER_PROCESS`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(hosts) = env("AQYL_CLUSTER_HOSTS") {
            self.hosts = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(p) = env("AQYL_CLUSTER_PROCESS") {
            self.process = p.trim().parse().map_err(|_| {
                format!("AQYL_CLUSTER_PROCESS is {p:?}; give this process's index in the hosts list, from 0")
            })?;
        }
        Ok(())
    }

    /// What is wrong with the section, if anything (a message that says what to do).
    pub fn problem(&self) -> Option<String> {
        if self.hosts.len() > MAX_PROCESSES {
            return Some(format!(
                "cluster.hosts has {} entries; at most {MAX_PROCESSES} processes are supported",
                self.hosts.len()
            ));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(why) = host_problem(h) {
                return Some(format!("cluster.hosts[{i}] {h:?}: {why}"));
            }
            if self.hosts[..i].contains(h) {
                return Some(format!(
                    "cluster.hosts lists {h:?} twice; every process needs an address of its own"
                ));
            }
        }
        if self.process >= self.processes() {
            return Some(format!(
                "cluster.process is {}, but cluster.hosts has {} entries; give this process's index in the list, from 0",
                self.process,
                self.hosts.len()
            ));
        }
        if let Some(l) = &self.listen {
            if l.parse::<std::net::SocketAddr>().is_err() {
                return Some(format!(
                    "cluster.listen {l:?} is not an address to listen on; write it as IP:port, e.g. \"0.0.0.0:2101\""
                ));
            }
        }
        if self.group.is_empty() || self.group.contains(['/', '+', '#']) {
            return Some(format!(
                "cluster.group {:?} must be a non-empty name without '/', '+' or '#'",
                self.group
            ));
        }
        None
    }
}

/// Why `host` is not a `host:port` peer address, if it is not.
fn host_problem(host: &str) -> Option<&'static str> {
    let Some((name, port)) = host.rsplit_once(':') else {
        return Some("write it as host:port, e.g. \"aqyl-0.aqyl:2101\"");
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Some("the host name is empty or has spaces; write it as host:port");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some("the port must be a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(hosts: &[&str], process: usize) -> ClusterConfig {
        ClusterConfig {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            process,
            listen: None,
            group: default_group(),
        }
    }

    #[test]
    fn no_section_is_one_process() {
        let c = ClusterConfig::default();
        assert_eq!((c.processes(), c.enabled(), c.problem()), (1, false, None));
    }

    #[test]
    fn hosts_and_index_are_checked() {
        assert_eq!(cluster(&["a:2101", "b:2101"], 1).problem(), None);
        let p = |hosts: &[&str], process| cluster(hosts, process).problem().unwrap();
        assert!(p(&["a:2101", "b"], 0).contains("cluster.hosts[1] \"b\": write it as host:port"));
        assert!(p(&["a:0"], 0).contains("port must be a number"));
        assert!(p(&["a:1", "a:1"], 0).contains("twice"));
        assert!(p(&["a:1", "b:1"], 2).starts_with("cluster.process is 2, but cluster.hosts has 2"));
        assert!(p(&[], 1).contains("cluster.process is 1"));
        let mut c = cluster(&["a:1", "b:1"], 0);
        c.group = "a/b".into();
        assert!(c.problem().unwrap().contains("cluster.group"));
        c.group = "g".into();
        c.listen = Some("nowhere".into());
        assert!(c.problem().unwrap().contains("cluster.listen"));
    }

    #[test]
    fn the_environment_wins_and_listen_defaults_to_the_own_port() {
        let mut c = cluster(&["a:1"], 0);
        let env = |k: &str| match k {
            "AQYL_CLUSTER_HOSTS" => Some(" x:2101, y:2102 ,".to_string()),
            "AQYL_CLUSTER_PROCESS" => Some("1".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c, cluster(&["x:2101", "y:2102"], 1));
        assert_eq!(c.listen_addr(), "0.0.0.0:2102");
        let bad = |k: &str| (k == "AQYL_CLUSTER_PROCESS").then(|| "first".to_string());
        let err = c.apply_env(bad).unwrap_err();
        assert!(
            err.starts_with("AQYL_CLUSTER_PROCESS is \"first\""),
            "{err}"
        );
    }
}
