//! Slot workers on other hosts, over the actor framework's own distribution layer
//! (`ractor_cluster`): one coordinator process keeps the server, aggregator and client actors;
//! `sim worker` processes offer slots that run its training and evaluation jobs.
//!
//! - the worker side, [`crate::sim::worker`] (it prepares runs as `sim run` does) — a node
//!   that, once the coordinator sends it the run's scenario, prepares the same inputs (its own
//!   copy of the model and the data files) and runs jobs on its own slots.
//! - [`coordinator`]: the coordinator side — connects to the workers, checks that each
//!   prepared what the coordinator did (model SHA-256, the inputs' fingerprint), and gives each
//!   remote slot a thread that takes jobs from the run's queue like a local slot does.
//!
//! Nodes authenticate with ractor_cluster's cookie challenge; the cookie comes from a file
//! (never a default). What travels is this module's messages, MessagePack-encoded inside
//! ractor_cluster's byte frames, and decoded with errors as data: a worker cannot crash the
//! coordinator with a malformed reply.

pub mod coordinator;
pub mod tls;

use std::path::{Path, PathBuf};

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::messages::{EvaluateRes, TaskScope};

/// The process group a worker's actor joins, where the coordinator finds it.
pub const WORKER_GROUP: &str = "fedsim.workers";

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cookie file cannot be read.
    #[error("cookie file {path}: {source}")]
    CookieRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cookie is too short to be a secret.
    #[error(
        "cookie file {path}: the cookie is {len} characters; use at least 16 (e.g. \
         `head -c 24 /dev/urandom | base64 > {path}`), the same file on every node"
    )]
    CookieWeak {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
    /// A TLS file cannot be used.
    #[error("TLS file {path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A node could not start, listen or connect.
    #[error("{what}: {message}")]
    Node {
        /// What was being done.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// A worker did not become usable.
    #[error("worker {addr}: {message}")]
    Worker {
        /// The worker's address.
        addr: String,
        /// What went wrong, and the fix.
        message: String,
    },
    /// A message could not be encoded or decoded.
    #[error("{what}: {message}")]
    Wire {
        /// Which message.
        what: &'static str,
        /// The codec's words.
        message: String,
    },
}

/// The shared secret nodes prove to each other, read from a file.
#[derive(Clone)]
pub struct Cookie(String);

impl Cookie {
    /// Read the cookie in `path` (surrounding whitespace trimmed).
    ///
    /// # Errors
    /// An unreadable file, or a cookie shorter than 16 characters.
    pub fn from_file(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::CookieRead {
            path: path.to_path_buf(),
            source,
        })?;
        let cookie = text.trim();
        if cookie.chars().count() < 16 {
            return Err(ClusterError::CookieWeak {
                path: path.to_path_buf(),
                len: cookie.chars().count(),
            });
        }
        Ok(Self(cookie.to_string()))
    }

    pub(crate) fn secret(&self) -> String {
        self.0.clone()
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(…)")
    }
}

/// What a worker did for a run (`summary.json`'s `workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its address.
    pub addr: String,
    /// Slots it offered.
    pub slots: usize,
    /// Jobs it answered (training and evaluation).
    pub jobs: u64,
    /// Seconds its remote slots waited on it (a job's round trip, summed).
    pub busy_seconds: f64,
    /// Bytes of job requests sent to it.
    pub bytes_sent: u64,
    /// Bytes of answers received from it.
    pub bytes_received: u64,
    /// Whether it was lost at the end of the run.
    pub lost: bool,
    /// Times it was lost during the run (a closed connection, no heartbeat answer, an answer
    /// that broke the protocol).
    #[serde(default)]
    pub losses: u64,
    /// Times it came back after a loss and was set up again.
    #[serde(default)]
    pub rejoins: u64,
}

/// What a worker's actor answers; each payload is MessagePack of this module's types.
#[derive(RactorClusterMessage)]
pub enum WorkerMsg {
    /// Prepare the run: a [`SetupReq`], answered with a [`SetupRes`].
    #[rpc]
    Setup(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Run one job: a [`JobReq`], answered with a [`JobRes`].
    #[rpc]
    Run(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A heartbeat: answered at once with the same bytes.
    #[rpc]
    Ping(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// f32 values on the wire as their little-endian bytes (MessagePack would tag each value: 5
/// bytes and a branch per value instead of 4 bytes and a copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F32s(#[serde(with = "crate::bytes::f32s")] pub Vec<f32>);

/// The run a worker is to serve.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetupReq {
    /// The validated scenario, as the run directory's `scenario.ron` holds it.
    pub scenario: String,
}

/// A worker's answer to [`SetupReq`].
#[derive(Debug, Serialize, Deserialize)]
pub enum SetupRes {
    /// Prepared: what it holds, for the coordinator to compare with its own.
    Ready {
        /// Slots it offers.
        slots: usize,
        /// SHA-256 of the pretrained base it loaded (None: generated from the seed).
        model_sha256: Option<String>,
        /// The prepared inputs' fingerprint (shards, tokenised examples, model source).
        inputs: String,
    },
    /// It could not prepare the run (the reason names the file or field).
    Refused(String),
}

/// One job, as a slot would get it.
#[derive(Debug, Serialize, Deserialize)]
pub enum JobReq {
    /// Local training from `global` on the examples of `shard`.
    Train {
        /// The global adapter's values.
        global: F32s,
        /// Indices of the client's training examples.
        shard: Vec<u32>,
        /// Seed of the LoRA dropout masks.
        dropout_seed: u64,
        /// Per step, indices into the client's examples.
        batches: Vec<Vec<u32>>,
        /// Learning rate.
        lr: f64,
        /// AdamW weight decay.
        weight_decay: f64,
        /// FedProx's μ.
        proximal_mu: f64,
    },
    /// Held-out evaluation.
    Evaluate {
        /// The round evaluated after.
        round: usize,
        /// The adapter's values (None: the base alone).
        adapter: Option<F32s>,
        /// Which task items to score as well.
        task: TaskScope,
    },
}

/// A worker's answer to [`JobReq`].
#[derive(Debug, Serialize, Deserialize)]
pub enum JobRes {
    /// Training finished.
    Trained {
        /// `local − global`.
        update: F32s,
        /// Mean training loss.
        train_loss: f64,
        /// Optimiser steps taken.
        steps: usize,
        /// Tokens processed.
        tokens: usize,
        /// Host seconds the worker's slot spent.
        host_seconds: f64,
        /// Split learning's messages (None otherwise).
        #[serde(default)]
        split: Option<crate::split::SplitTraffic>,
    },
    /// Evaluation finished.
    Evaluated(EvaluateRes),
    /// The job failed on the worker (diverged, no examples, a panic): the reason.
    Failed(String),
}

/// MessagePack of `value`.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, ClusterError> {
    rmp_serde::to_vec(value).map_err(|e| ClusterError::Wire {
        what,
        message: e.to_string(),
    })
}

/// `T` from MessagePack bytes (a malformed message is an error, never a panic).
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ClusterError> {
    rmp_serde::from_slice(bytes).map_err(|e| ClusterError::Wire {
        what,
        message: e.to_string(),
    })
}

/// A node server listening on `addr` with `cookie`, accepting TLS when `tls` is given.
pub(crate) fn node_server(
    addr: std::net::SocketAddr,
    cookie: &Cookie,
    name: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> ractor_cluster::NodeServer {
    ractor_cluster::NodeServer::new(
        addr.port(),
        cookie.secret(),
        name,
        addr.ip().to_string(),
        tls.map(ractor_cluster::IncomingEncryptionMode::Tls),
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(addr.ip())
    .with_max_inbound_frame_size(MAX_FRAME)
}

/// Largest message a node accepts: a SmolLM2 r = 8 adapter is 3.7 MB; this leaves room for
/// adapters of larger models and ranks.
const MAX_FRAME: u64 = 256 << 20;
