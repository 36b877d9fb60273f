//! Why a client's fit gave no update, short of a crash or a deadline: data in its round's
//! records (a failed client), never an actor error.

use std::sync::Arc;

use crate::ids::RoundId;

/// Why a fit failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FitFailure {
    /// The fit arrived without the plan the server sent before it (a protocol slip).
    #[error("round {0}: fit without a plan")]
    NoPlan(RoundId),
    /// The run is stopping: no more jobs are admitted.
    #[error("the run is shutting down")]
    ShuttingDown,
    /// The slot pool no longer takes jobs.
    #[error("the slot pool is closed")]
    SlotsClosed,
    /// The slot ended without answering the job.
    #[error("the slot dropped the job")]
    JobDropped,
    /// Training ran and failed (diverged, no data, a model or worker error).
    #[error("{}", crate::fmt::chain(.0.as_ref()))]
    Training(Arc<crate::train::TrainError>),
    /// The update could not be prepared for upload.
    #[error("{}", crate::fmt::chain(.0))]
    Upload(UploadFailure),
    /// The aggregator actor is gone.
    #[error("the aggregator is gone")]
    AggregatorGone,
    /// Its edge aggregator could not set up secure aggregation for the round (hierarchy).
    #[error("its edge's secure aggregation could not be set up: {0}")]
    EdgeSetup(Arc<SetupError>),
}

/// Why a round cannot be aggregated securely (recorded as the round's reason).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// SecAgg+ cannot run the round (too few clients for the threshold, say).
    #[error(transparent)]
    SecAgg(#[from] crate::secagg::SecAggError),
    /// Homomorphic encryption cannot run the round.
    #[error(transparent)]
    He(#[from] crate::he::HeError),
}

/// Why an update could not become its upload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UploadFailure {
    /// Masking for SecAgg+ failed.
    #[error("masking its update")]
    Mask(#[source] Arc<crate::secagg::SecAggError>),
    /// Homomorphic encryption failed.
    #[error("encrypting its update")]
    Encrypt(#[source] Arc<crate::he::HeError>),
    /// Compressing the update failed.
    #[error("compressing its update")]
    Compress(#[source] Arc<crate::compress::CompressError>),
    /// Serialising the adapter failed.
    #[error("serialising its update")]
    Serialise(#[source] Arc<crate::model::ModelError>),
}

/// The kind of a [`FitFailure`], as `clients.jsonl` records it (`failure_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// [`FitFailure::NoPlan`].
    NoPlan,
    /// [`FitFailure::ShuttingDown`].
    ShuttingDown,
    /// [`FitFailure::SlotsClosed`].
    SlotsClosed,
    /// [`FitFailure::JobDropped`].
    JobDropped,
    /// [`FitFailure::Training`].
    Training,
    /// [`FitFailure::Upload`].
    Upload,
    /// [`FitFailure::AggregatorGone`].
    AggregatorGone,
    /// [`FitFailure::EdgeSetup`].
    EdgeSetup,
}

impl FitFailure {
    /// Its kind.
    pub fn kind(&self) -> FailureKind {
        match self {
            FitFailure::NoPlan(_) => FailureKind::NoPlan,
            FitFailure::ShuttingDown => FailureKind::ShuttingDown,
            FitFailure::SlotsClosed => FailureKind::SlotsClosed,
            FitFailure::JobDropped => FailureKind::JobDropped,
            FitFailure::Training(_) => FailureKind::Training,
            FitFailure::Upload(_) => FailureKind::Upload,
            FitFailure::AggregatorGone => FailureKind::AggregatorGone,
            FitFailure::EdgeSetup(_) => FailureKind::EdgeSetup,
        }
    }
}

/// Two failures are equal when they are of one kind and say the same.
impl PartialEq for FitFailure {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.to_string() == other.to_string()
    }
}
