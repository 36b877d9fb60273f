//! The run's workers on other hosts (scenario `slots.workers`): joining them to the run's
//! slots, and sampling their counters into the run's metrics.

use std::sync::Arc;
use std::time::Duration;

use super::{checkpoint, Prepared, SimError};
use crate::cluster::coordinator::{connect, Cluster, Expect, RemoteWorker, WorkerSet};
use crate::cluster::{tls, ClusterError, Cookie};
use crate::model::AdapterLayout;
use crate::scenario::Scenario;
use crate::slots::SlotPool;
use crate::telemetry::Telemetry;

/// The workers, cookie and TLS settings of `s` (None without workers), read now: a missing
/// or weak cookie, or a bad TLS file, is found before hours of preparation, naming the field.
///
/// # Errors
/// The cookie file or a TLS file cannot be used.
pub(super) fn worker_set(s: &Scenario) -> Result<Option<WorkerSet>, SimError> {
    let Some(w) = s.workers() else {
        return Ok(None);
    };
    let field = |e: ClusterError, f: &str| ClusterError::Node {
        what: format!("{}: slots.workers.{f}", s.source_path.display()),
        message: e.to_string(),
    };
    Ok(Some(WorkerSet {
        addrs: w.addrs.clone(),
        cookie: Cookie::from_file(&w.cookie_file).map_err(|e| field(e, "cookie_file"))?,
        tls: w
            .tls
            .as_ref()
            .map(|t| tls::client(&t.ca, &t.server_name))
            .transpose()
            .map_err(|e| field(e, "tls"))?,
    }))
}

/// Connect to the workers of `set`, set the run up on each, and add their slots to `pool`.
pub(super) async fn join(
    s: &Scenario,
    set: &WorkerSet,
    prep: &Prepared,
    layout: &Arc<AdapterLayout>,
    pool: &mut SlotPool,
) -> Result<Cluster, SimError> {
    let expect = Expect {
        scenario: s.to_ron(),
        model_sha256: prep
            .lora
            .as_ref()
            .and_then(|l| l.source.as_ref())
            .map(|m| m.sha256.clone()),
        inputs: checkpoint::inputs_fingerprint(prep),
        layout: layout.clone(),
        loss_expected: matches!(s.trainer, crate::trainer::TrainerKind::Lora),
    };
    let cluster = connect(set, expect).await?;
    for worker in &cluster.workers {
        pool.attach_remote(worker.clone() as Arc<dyn crate::slots::Remote>)?;
    }
    Ok(cluster)
}

/// How often the workers' counters go to the metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples the workers' counters into `telemetry` every second, and once more when dropped.
pub(super) struct Sampler {
    workers: Vec<Arc<RemoteWorker>>,
    telemetry: Telemetry,
    task: tokio::task::JoinHandle<()>,
}

/// Start sampling `cluster`'s workers into `telemetry`.
/// The run's workers joined to `pool` (none without `slots.workers`), and the sampler of
/// their metrics when telemetry is on.
///
/// # Errors
/// Workers that cannot be reached or refuse the run.
pub(super) async fn start(
    s: &Scenario,
    prep: &Prepared,
    layout: &Arc<AdapterLayout>,
    pool: &mut SlotPool,
    telemetry: Option<Telemetry>,
) -> Result<(Option<Cluster>, Option<Sampler>), SimError> {
    let cluster = match worker_set(s)? {
        Some(set) => Some(join(s, &set, prep, layout, pool).await?),
        None => None,
    };
    let sampler = cluster.as_ref().zip(telemetry).map(|(c, t)| sample(c, t));
    Ok((cluster, sampler))
}

pub(super) fn sample(cluster: &Cluster, telemetry: Telemetry) -> Sampler {
    let workers = cluster.workers.clone();
    let (w, t) = (workers.clone(), telemetry.clone());
    let task = tokio::spawn(async move {
        loop {
            t.workers(&w.iter().map(|x| x.live()).collect::<Vec<_>>());
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    });
    Sampler {
        workers,
        telemetry,
        task,
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
        let live: Vec<_> = self.workers.iter().map(|x| x.live()).collect();
        self.telemetry.workers(&live);
    }
}
