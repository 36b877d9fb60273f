//! `sim worker`: offer this host's slots to a coordinator (`sim run --workers`).

use std::net::SocketAddr;
use std::path::PathBuf;

use fedsim::cluster::Cookie;
use fedsim::shutdown::StopLevel;
use fedsim::sim::worker::{serve, WorkerOptions};

/// `sim worker` arguments.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Address to listen on: loopback by default; give an interface's address (or 0.0.0.0) to
    /// serve coordinators on other hosts.
    #[arg(long, default_value = "127.0.0.1:7101", value_name = "HOST:PORT")]
    pub listen: SocketAddr,
    /// The cluster's shared secret: a file holding at least 16 characters, the same file on
    /// the coordinator and every worker.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: PathBuf,
    /// Slots this worker offers (jobs it runs at once).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Matmul threads per slot.
    #[arg(long, default_value_t = 1)]
    pub threads_per_slot: usize,
    /// The model cache to load the base from (default: $FEDSIM_CACHE, else
    /// ~/.cache/fedsim/models; fill it with `sim fetch-model`).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key. The coordinator checks it
    /// against the authority in the scenario's slots.workers.tls.ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Serve until SIGINT, SIGTERM or SIGHUP.
pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.slots >= 1,
        "--slots is 0; a worker offers at least 1 slot"
    );
    anyhow::ensure!(
        a.threads_per_slot >= 1,
        "--threads-per-slot is 0; give at least 1"
    );
    if let Some(dir) = &a.cache {
        anyhow::ensure!(
            dir.is_dir(),
            "--cache {}: not a directory; fill one with `FEDSIM_CACHE={} sim fetch-model …`",
            dir.display(),
            dir.display()
        );
    }
    let opts = WorkerOptions {
        listen: a.listen,
        cookie: Cookie::from_file(&a.cookie_file)?,
        slots: a.slots,
        threads_per_slot: a.threads_per_slot,
        tls: match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(fedsim::cluster::tls::server(cert, key)?),
            _ => None,
        },
    };
    let runtime = super::run::runtime()?;
    let mut shutdown = super::run::stop_on_signals(&runtime)?;
    eprintln!(
        "worker listening on {}{} with {} slot(s) of {} thread(s)",
        a.listen,
        if a.tls_cert.is_some() { " (TLS)" } else { "" },
        a.slots,
        a.threads_per_slot
    );
    runtime.block_on(serve(opts, async move {
        shutdown.reached(StopLevel::FinishRound).await;
    }))?;
    Ok(())
}
