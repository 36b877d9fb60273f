//! Communication cost of federated fine-tuning: what sending adapters instead of whole models
//! saves (the course's `compute_communication_costs`), with every unit named: bytes, MiB
//! (2²⁰ B), MB (10⁶ B), Mbit/s (10⁶ bit/s).
//!
//! The course computes seconds per message as MiB × 8 / (Mbit/s), mixing a binary size with a
//! decimal rate; fedsim prints the exact time (bytes × 8 / (Mbit/s × 10⁶)) and the course's
//! figure beside it, so both can be checked.

use std::fmt;
use std::path::Path;

use crate::report::{ReportError, Summary};

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// What the cost is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct CommInput {
    /// Parameters of the whole model (what full-model federated learning would send).
    pub total_params: u64,
    /// Trainable (adapter) parameters.
    pub trainable_params: u64,
    /// Bytes per parameter on the wire (4 for f32).
    pub bytes_per_param: u64,
    /// Bytes of one adapter message as sent (its safetensors header included), if known;
    /// else trainable × bytes per parameter.
    pub adapter_message_bytes: Option<u64>,
    /// Bytes of one upload when the scenario compresses them (`compression`); None: the
    /// adapter message both ways.
    pub upload_message_bytes: Option<u64>,
    /// Messages: downloads and uploads.
    pub messages: Messages,
    /// Link speed, Mbit/s (10⁶ bit/s).
    pub bandwidth_mbps: f64,
}

/// How many messages a run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Messages {
    /// Planned: rounds × clients per round, one download and one upload each.
    Planned {
        /// Rounds.
        rounds: u64,
        /// Clients per round.
        clients_per_round: u64,
    },
    /// What a run sent (from its run directory).
    Sent {
        /// Adapter downloads.
        downloads: u64,
        /// Adapter uploads.
        uploads: u64,
        /// Bytes sent to clients.
        bytes_down: u64,
        /// Bytes received from clients.
        bytes_up: u64,
    },
}

/// The computed costs.
#[derive(Debug, Clone, PartialEq)]
pub struct CommReport {
    /// The input.
    pub input: CommInput,
    /// Bytes of one full-model message.
    pub full_message_bytes: u64,
    /// Bytes of one adapter message.
    pub adapter_message_bytes: u64,
    /// Seconds per full-model message at the bandwidth (exact units).
    pub full_message_s: f64,
    /// Seconds per adapter message.
    pub adapter_message_s: f64,
    /// The course's seconds per full-model message (MiB × 8 / Mbit/s).
    pub full_message_s_course: f64,
    /// The course's seconds per adapter message.
    pub adapter_message_s_course: f64,
    /// Messages in all (both directions).
    pub messages: u64,
    /// Bytes if whole models were sent.
    pub full_total_bytes: u64,
    /// Bytes of adapters (sent, for a run).
    pub adapter_total_bytes: u64,
    /// full_total / adapter_total.
    pub savings: f64,
}

/// Errors of `sim comm`.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// A run directory that cannot be read.
    #[error(transparent)]
    Run(#[from] ReportError),
    /// A number that makes no sense.
    #[error("{what} must be {rule}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// A product of the inputs does not fit in 64 bits.
    #[error("{what} overflows 64 bits ({detail}); lower the inputs")]
    Overflow {
        /// Which quantity.
        what: &'static str,
        /// The factors.
        detail: String,
    },
    /// The run's adapter file (its message size) cannot be read.
    #[error("{}: cannot read the adapter (its size is the message size)", path.display())]
    Adapter {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn mul(what: &'static str, a: u64, b: u64) -> Result<u64, CommError> {
    a.checked_mul(b).ok_or_else(|| CommError::Overflow {
        what,
        detail: format!("{a} × {b}"),
    })
}

fn add(what: &'static str, a: u64, b: u64) -> Result<u64, CommError> {
    a.checked_add(b).ok_or_else(|| CommError::Overflow {
        what,
        detail: format!("{a} + {b}"),
    })
}

impl CommInput {
    /// The costs.
    ///
    /// # Errors
    /// [`CommError::Invalid`] for zero parameters or a bandwidth that is not positive.
    pub fn compute(&self) -> Result<CommReport, CommError> {
        let bad = |what, rule| Err(CommError::Invalid { what, rule });
        if self.total_params == 0 || self.trainable_params == 0 {
            return bad("--total-params and --trainable-params", "at least 1");
        }
        if self.trainable_params > self.total_params {
            return bad("--trainable-params", "at most --total-params");
        }
        if !(self.bandwidth_mbps > 0.0 && self.bandwidth_mbps.is_finite()) {
            return bad("--bandwidth-mbps", "a positive number of Mbit/s");
        }
        if self.bytes_per_param == 0 {
            return bad("--bytes-per-param", "at least 1");
        }
        let full = mul(
            "full-model message bytes",
            self.total_params,
            self.bytes_per_param,
        )?;
        let adapter = match self.adapter_message_bytes {
            Some(b) => b,
            None => mul(
                "adapter message bytes",
                self.trainable_params,
                self.bytes_per_param,
            )?,
        };
        let secs = |bytes: u64| bytes as f64 * 8.0 / (self.bandwidth_mbps * 1e6);
        let course = |bytes: u64| bytes as f64 / MIB * 8.0 / self.bandwidth_mbps;
        let (messages, adapter_total) = match self.messages {
            Messages::Planned {
                rounds,
                clients_per_round,
            } => {
                let each = mul("messages", rounds, clients_per_round)?;
                let up = self.upload_message_bytes.unwrap_or(adapter);
                let both = add("adapter bytes in all", adapter, up)?;
                let m = mul("messages", each, 2)?;
                (m, mul("adapter bytes in all", each, both)?)
            }
            Messages::Sent {
                downloads,
                uploads,
                bytes_down,
                bytes_up,
            } => (
                add("messages", downloads, uploads)?,
                add("adapter bytes in all", bytes_down, bytes_up)?,
            ),
        };
        let full_total = mul("full-model bytes in all", messages, full)?;
        Ok(CommReport {
            input: self.clone(),
            full_message_bytes: full,
            adapter_message_bytes: adapter,
            full_message_s: secs(full),
            adapter_message_s: secs(adapter),
            full_message_s_course: course(full),
            adapter_message_s_course: course(adapter),
            messages,
            full_total_bytes: full_total,
            adapter_total_bytes: adapter_total,
            savings: full_total as f64 / adapter_total.max(1) as f64,
        })
    }

    /// From a run directory: its parameter counts, its adapter file's size (the message size)
    /// and the bytes it sent.
    ///
    /// # Errors
    /// An unreadable summary or adapter.
    pub fn from_run(dir: &Path, bandwidth_mbps: f64) -> Result<Self, CommError> {
        let s = Summary::read(dir)?;
        let upload = s.compression.as_ref().map(|c| c.bytes_per_upload);
        let path = dir.join("adapter_model.safetensors");
        let size = std::fs::metadata(&path)
            .map_err(|source| CommError::Adapter {
                path: path.clone(),
                source,
            })?
            .len();
        Ok(Self {
            total_params: (s.base_parameters + s.trainable_parameters) as u64,
            trainable_params: s.trainable_parameters as u64,
            bytes_per_param: 4,
            adapter_message_bytes: Some(size),
            upload_message_bytes: upload,
            messages: Messages::Sent {
                downloads: s.bytes_down_total / size.max(1),
                uploads: s.bytes_up_total / upload.unwrap_or(size).max(1),
                bytes_down: s.bytes_down_total,
                bytes_up: s.bytes_up_total,
            },
            bandwidth_mbps,
        })
    }
}

/// Bytes as "N B = x MiB = y MB".
fn sizes(bytes: u64) -> String {
    format!(
        "{} B = {:.2} MiB = {:.2} MB",
        crate::fmt::thousands(bytes),
        bytes as f64 / MIB,
        bytes as f64 / 1e6
    )
}

/// Totals: GiB/GB or MiB/MB.
fn total(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB ({:.2} GB)", b / GIB, b / 1e9)
    } else {
        format!("{:.2} MiB ({:.2} MB)", b / MIB, b / 1e6)
    }
}

impl fmt::Display for CommReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.input;
        let t = crate::fmt::thousands;
        writeln!(
            f,
            "parameters: {} total, {} trainable ({:.2} %)",
            t(i.total_params),
            t(i.trainable_params),
            100.0 * i.trainable_params as f64 / i.total_params as f64
        )?;
        writeln!(
            f,
            "per message ({} bytes per parameter):",
            i.bytes_per_param
        )?;
        writeln!(f, "  full model  {}", sizes(self.full_message_bytes))?;
        writeln!(f, "  adapter     {}", sizes(self.adapter_message_bytes))?;
        if let Some(up) = i.upload_message_bytes {
            writeln!(f, "  upload      {} (compressed)", sizes(up))?;
        }
        writeln!(
            f,
            "seconds per message at {} Mbit/s (10^6 bit/s): full model {:.2} s, adapter {:.2} s",
            i.bandwidth_mbps, self.full_message_s, self.adapter_message_s
        )?;
        writeln!(
            f,
            "  (the course's arithmetic, MiB x 8 / Mbit/s: {:.2} s and {:.2} s)",
            self.full_message_s_course, self.adapter_message_s_course
        )?;
        match i.messages {
            Messages::Planned {
                rounds,
                clients_per_round,
            } => writeln!(
                f,
                "messages: {rounds} rounds x {clients_per_round} clients x 2 directions = {}",
                self.messages
            )?,
            Messages::Sent {
                downloads, uploads, ..
            } => writeln!(
                f,
                "messages sent by the run: {downloads} downloads + {uploads} uploads = {}",
                self.messages
            )?,
        }
        writeln!(
            f,
            "total: full models {}, adapters {}",
            total(self.full_total_bytes),
            total(self.adapter_total_bytes)
        )?;
        write!(f, "savings: {:.1}x fewer bytes with adapters", self.savings)
    }
}
