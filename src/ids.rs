//! Who and when: client and round ids, shared by every layer (a leaf: it imports nothing).

/// Index of a client, 0-based.
pub type ClientId = usize;
/// Federated round, 1-based (0 is the evaluation before training).
pub type RoundId = usize;
