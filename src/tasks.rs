//! The background tasks of a node (maintenance, outboxes, the bus reader,
//! STUN, reconnect counters): spawned on one tracker and stopped by one
//! token, so that shutdown ends them and waits for them, and none outlives
//! the node unseen. The seams (bus, store connections) are built before the
//! core and take a [`Tasks`] of their own: the same one the core then holds.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// A node's background tasks. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    /// Every task spawned here (shutdown waits on it).
    tracker: TaskTracker,
    /// Cancelled to end them: each task is dropped at its next await.
    stop: CancellationToken,
}

impl Tasks {
    /// Runs a task until it ends or [`Self::stop`] is called.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Ends every task and waits for them, at most `within`.
    pub async fn stop(&self, within: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tracker.len(),
                "background tasks still running"
            );
        }
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task runs.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_tasks_that_would_run_forever_and_waits_for_them() {
        let tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        tasks.spawn(async {});
        tasks.stop(Duration::from_secs(5)).await;
        assert!(tasks.is_empty(), "{} still running", tasks.len());
        // The forever task was dropped: its end of the channel is gone.
        assert!(rx.await.is_err());
    }
}
