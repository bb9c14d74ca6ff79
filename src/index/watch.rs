//! Who waits for changes of the index: one watch channel per job watched and one
//! broadcast per tenant watched, so a change wakes only the watchers of that job and of its
//! tenant, and an index nobody watches pays one atomic load per change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use imagejobs_core::ids::{JobId, TenantId};

/// Changes a tenant's watcher may fall behind by before it must reload.
const TENANT_BACKLOG: usize = 1024;

#[derive(Default)]
pub struct Watchers {
    watching: AtomicUsize,
    jobs: Mutex<HashMap<JobId, watch::Sender<u64>>>,
    tenants: Mutex<HashMap<TenantId, broadcast::Sender<JobId>>>,
}

impl Watchers {
    /// Tells the watchers of `job` and of `tenant` that the job changed.
    pub fn notify(&self, tenant: TenantId, job: JobId) {
        if self.watching.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(tx) = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job)
        {
            tx.send_modify(|n| *n += 1);
        }
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tenants.get(&tenant) {
            let _ = tx.send(job);
        }
    }

    pub fn watch_job(self: &Arc<Self>, job: JobId) -> JobWatch {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let rx = jobs
            .entry(job)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        self.watching.fetch_add(1, Ordering::AcqRel);
        JobWatch {
            watchers: self.clone(),
            job,
            rx: Some(rx),
        }
    }

    pub fn watch_tenant(self: &Arc<Self>, tenant: TenantId) -> TenantWatch {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let rx = tenants
            .entry(tenant)
            .or_insert_with(|| broadcast::Sender::new(TENANT_BACKLOG))
            .subscribe();
        self.watching.fetch_add(1, Ordering::AcqRel);
        TenantWatch {
            watchers: self.clone(),
            tenant,
            rx: Some(rx),
        }
    }

    /// Watchers registered now.
    pub fn count(&self) -> usize {
        self.watching.load(Ordering::Acquire)
    }
}

/// A watcher of one job; unregistered when dropped.
pub struct JobWatch {
    watchers: Arc<Watchers>,
    job: JobId,
    rx: Option<watch::Receiver<u64>>,
}

impl JobWatch {
    /// Waits for the next change of the job (returns at once if one came since the last
    /// call).
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut jobs = self.watchers.jobs.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.rx.take());
        if jobs
            .get(&self.job)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            jobs.remove(&self.job);
        }
        self.watchers.watching.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A watcher of one tenant's jobs; unregistered when dropped.
pub struct TenantWatch {
    watchers: Arc<Watchers>,
    tenant: TenantId,
    rx: Option<broadcast::Receiver<JobId>>,
}

/// What a [`TenantWatch`] receives.
pub enum TenantChange {
    Job(JobId),
    /// The watcher fell behind and missed changes: it must reload.
    Missed,
}

impl TenantWatch {
    pub async fn next(&mut self) -> TenantChange {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        match rx.recv().await {
            Ok(job) => TenantChange::Job(job),
            Err(broadcast::error::RecvError::Lagged(_)) => TenantChange::Missed,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for TenantWatch {
    fn drop(&mut self) {
        let mut tenants = self
            .watchers
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        drop(self.rx.take());
        if tenants
            .get(&self.tenant)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            tenants.remove(&self.tenant);
        }
        self.watchers.watching.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_its_watchers_only_and_they_clean_up() {
        let w = Arc::new(Watchers::default());
        let (a, b) = (JobId::new(), JobId::new());
        let mut wa = w.watch_job(a);
        let mut wt = w.watch_tenant(TenantId(1));
        w.notify(TenantId(2), b);
        w.notify(TenantId(1), a);
        tokio::time::timeout(std::time::Duration::from_secs(1), wa.changed())
            .await
            .expect("woken");
        match wt.next().await {
            TenantChange::Job(j) => assert_eq!(j, a),
            TenantChange::Missed => panic!("nothing missed"),
        }
        assert_eq!(w.count(), 2);
        drop((wa, wt));
        assert_eq!(w.count(), 0);
        assert!(w.jobs.lock().unwrap().is_empty() && w.tenants.lock().unwrap().is_empty());
    }
}
