//! Scoring slots: threads that each own a rayon pool and score whole batches, as training
//! slots train whole clients. Batch `i` of a call always holds the same texts and goes to slot
//! `i mod slots`, and results come back in order, so scores do not depend on the slot count.

use super::scoring::{token_stats, TokenStat};
use crate::model::{BaseModel, ModelError};
use crate::tokenizer::TokenizedExample;

/// The statistics of one batch's texts.
type BatchStats = Vec<Vec<TokenStat>>;

/// Scoring threads.
pub struct ScoringSlots {
    pools: Vec<rayon::ThreadPool>,
    batch: usize,
}

impl ScoringSlots {
    /// `slots` slots of `threads` matmul threads each, `batch` texts per forward pass.
    ///
    /// # Errors
    /// When a thread pool cannot be created.
    pub fn new(
        slots: usize,
        threads: usize,
        batch: usize,
    ) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pools = (0..slots.max(1))
            .map(|s| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads.max(1))
                    .thread_name(move |i| format!("score{s}-mm{i}"))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pools,
            batch: batch.max(1),
        })
    }

    /// Slots.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether there are no slots (never: at least one is made).
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Texts per forward pass.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Token statistics of every example's response, in order.
    ///
    /// # Errors
    /// The first model failure of any slot.
    pub fn stats(
        &self,
        model: &BaseModel,
        examples: &[&TokenizedExample],
        pad: u32,
    ) -> Result<Vec<Vec<TokenStat>>, ModelError> {
        let batches: Vec<&[&TokenizedExample]> = examples.chunks(self.batch).collect();
        let n = self.pools.len();
        let per_slot: Vec<Result<Vec<(usize, BatchStats)>, ModelError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .pools
                    .iter()
                    .enumerate()
                    .map(|(s, pool)| {
                        let batches = &batches;
                        scope.spawn(move || {
                            pool.install(|| {
                                (s..batches.len())
                                    .step_by(n)
                                    .map(|i| {
                                        Ok((
                                            i,
                                            token_stats(model, batches[i], pad, batches[i].len())?,
                                        ))
                                    })
                                    .collect()
                            })
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
        let mut ordered: Vec<Option<BatchStats>> = vec![None; batches.len()];
        for slot in per_slot {
            for (i, stats) in slot? {
                ordered[i] = Some(stats);
            }
        }
        Ok(ordered.into_iter().flatten().flatten().collect())
    }
}
