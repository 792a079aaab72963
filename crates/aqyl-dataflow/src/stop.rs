//! How a durable cluster stops: together, with a last checkpoint of every process.
//!
//! A stop of any process (SIGTERM) stops the whole cluster, since none can go on with part of
//! the state gone:
//!
//! 1. The process asks process 0 to stop the cluster (`Stop` on its control connection);
//!    process 0, asked or stopped itself, tells every process (`Stopping`).
//! 2. Each process, stopped itself or told, stops taking messages, lets its ingest log writer
//!    finish (everything it acknowledged is logged and handed to its workers) and says so
//!    (`Drained`).
//! 3. Once every process has drained, process 0 asks for the last checkpoint, with `stop`:
//!    it is taken, written and completed like any other (see [`crate::coordinate`]), and the
//!    workers of every process end after it without closing their open windows. Every process
//!    then exits cleanly, and the next start restores it with nothing to replay.
//!
//! [`ClusterStop`] is one process's view of it: whether the cluster is stopping, which
//! processes have drained (known at process 0) and whether a control connection broke.

use tokio::sync::watch;

/// Where a cluster's stop stands, as one process knows it.
#[derive(Debug, Clone, Default)]
struct Standing {
    /// The cluster is stopping.
    stopping: bool,
    /// At process 0: which processes have drained (by index).
    drained: Vec<bool>,
    /// Why a control connection broke, if one did.
    broken: Option<String>,
}

/// One process's view of the cluster's stop (see the module doc).
#[derive(Debug)]
pub struct ClusterStop {
    standing: watch::Sender<Standing>,
}

impl ClusterStop {
    /// The stop of a cluster of `processes` processes, not begun.
    pub fn new(processes: usize) -> Self {
        let standing = Standing {
            drained: vec![false; processes],
            ..Standing::default()
        };
        Self {
            standing: watch::Sender::new(standing),
        }
    }

    /// The cluster is stopping; whether that is news.
    pub fn begin(&self) -> bool {
        self.standing
            .send_if_modified(|s| !std::mem::replace(&mut s.stopping, true))
    }

    /// Whether the cluster is stopping.
    pub fn is_stopping(&self) -> bool {
        self.standing.borrow().stopping
    }

    /// At process 0: `process` has drained (a drained process is stopping).
    pub fn drain(&self, process: usize) {
        self.standing.send_modify(|s| {
            s.stopping = true;
            if let Some(d) = s.drained.get_mut(process) {
                *d = true;
            }
        });
    }

    /// A control connection broke: nothing more can be agreed.
    pub fn broken(&self, why: String) {
        self.standing.send_modify(|s| {
            s.broken.get_or_insert(why);
        });
    }

    /// Completes once the cluster is stopping.
    pub async fn stopping(&self) {
        let mut rx = self.standing.subscribe();
        let _ = rx.wait_for(|s| s.stopping).await;
    }

    /// At process 0: completes once every process has drained, or fails once a control
    /// connection broke.
    pub async fn all_drained(&self) -> Result<(), String> {
        let mut rx = self.standing.subscribe();
        let s = rx
            .wait_for(|s| s.broken.is_some() || s.drained.iter().all(|d| *d))
            .await
            .map_err(|_| "the cluster's stop is gone".to_string())?;
        s.broken.clone().map_or(Ok(()), Err)
    }

    /// Completes with why, once a control connection broke.
    pub async fn broke(&self) -> String {
        let mut rx = self.standing.subscribe();
        let why = match rx.wait_for(|s| s.broken.is_some()).await {
            Ok(s) => s.broken.clone().unwrap_or_default(),
            Err(_) => "the cluster's stop is gone".into(),
        };
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_process_drains_before_the_last_checkpoint_and_a_break_fails_the_wait() {
        let stop = std::sync::Arc::new(ClusterStop::new(2));
        assert!(!stop.is_stopping());
        assert!(stop.begin(), "the first begin is news");
        assert!(!stop.begin(), "the second is not");
        stop.stopping().await;
        let waiting = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.all_drained().await })
        };
        stop.drain(1);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "process 0 has not drained yet");
        stop.drain(0);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        let stop = ClusterStop::new(2);
        stop.drain(0);
        stop.broken("process 1 is gone".into());
        assert_eq!(stop.all_drained().await, Err("process 1 is gone".into()));
        assert_eq!(stop.broke().await, "process 1 is gone");
    }
}
