//! What SecAgg+ costs on the virtual clock, and the record a round keeps of it.
//!
//! Messages are priced like every other transfer (`network::transfer_seconds`: the client's
//! latency, then its bytes over its link); each phase ends when the server has heard from
//! every client still in it, so a phase lasts as long as its slowest client:
//! - **keys**: every client uploads its public keys; the server then sends each one its
//!   neighbours' keys;
//! - **shares**: each client uploads its encrypted shares once it has its directory; the
//!   server then routes each client the shares addressed to it. Training starts after this;
//! - **masked**: each client masks its update before uploading it (compute on its timeline;
//!   the masked upload replaces the plain one);
//! - **unmask**: after the round's last upload, the server asks the survivors for shares, they
//!   answer, and the server regenerates and removes the masks (server compute).
//!
//! Compute is priced per ring element of one mask expansion (of 10 bytes: a narrower ring's
//! elements cost their share, [`reference_elements`]), from throughputs measured by
//! `cargo bench --bench secagg` (`masks_9`: a client's self mask and 8 pairwise masks;
//! `masks_100`: a server removing 100): the defaults below, or the scenario's
//! `client_elements_per_s` / `server_elements_per_s`.

use serde::{Deserialize, Serialize};

use crate::devices::DeviceProfile;
use crate::ids::ClientId;
use crate::network::transfer_seconds;

/// Ring elements a second one client masks with (AES-256-CTR at 10 bytes an element, drawn
/// with VAES, added in lanes): `masks_9` on the 2-core reference host, 2026-12-04
/// (1.96 G elements/s).
pub const CLIENT_ELEMENTS_PER_S: f64 = 1.96e9;

/// Ring elements a second the server regenerates and removes masks at: `masks_100` in the
/// same sitting (1.89 G elements/s).
pub const SERVER_ELEMENTS_PER_S: f64 = 1.89e9;

/// The compute throughputs secure aggregation is priced with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// A client's mask expansions, ring elements a second.
    pub client_elements_per_s: f64,
    /// The server's mask expansions and masked-vector sums, ring elements a second.
    pub server_elements_per_s: f64,
}

impl Default for Compute {
    fn default() -> Self {
        Self {
            client_elements_per_s: CLIENT_ELEMENTS_PER_S,
            server_elements_per_s: SERVER_ELEMENTS_PER_S,
        }
    }
}

/// One client's messages in the keys and shares phases (bytes), and the masks it will add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientSetup {
    /// Its public keys, up.
    pub keys_up: u64,
    /// Its neighbours' keys, down.
    pub keys_down: u64,
    /// Its encrypted shares, up.
    pub shares_up: u64,
    /// The shares addressed to it, down.
    pub shares_down: u64,
    /// Masks it adds to its update: its self mask and one per neighbour that shared.
    pub masks: usize,
}

/// A run's secure aggregation: its rounds' costs summed, and the rounds that released
/// nothing (`secagg_threshold` and other protocol failures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SecAggRun {
    /// The rounds' costs, summed.
    #[serde(flatten)]
    pub cost: SecAggCost,
    /// Rounds whose sum could not be unmasked.
    pub failed_rounds: usize,
}

impl SecAggRun {
    /// The run so far from its rounds' records (None when no round was secure).
    pub fn of<'a>(
        rounds: impl IntoIterator<Item = (&'a Option<SecAggCost>, bool)>,
    ) -> Option<Self> {
        let mut run: Option<Self> = None;
        for (cost, failed) in rounds {
            let Some(cost) = cost else { continue };
            let r = run.get_or_insert_with(Self::default);
            r.cost.accumulate(cost);
            r.failed_rounds += usize::from(failed);
        }
        run
    }
}

/// The unmasking phase as it went: each survivor's request (down) and response (up) bytes,
/// and the masks the server regenerated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unmasking {
    /// (survivor, request bytes down, response bytes up).
    pub messages: Vec<(ClientId, u64, u64)>,
    /// Masks regenerated: one per survivor, one per (survivor, dropped neighbour).
    pub masks: usize,
}

/// One phase of a round: bytes both ways over all clients, and the simulated seconds it adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Bytes clients sent.
    pub up_bytes: u64,
    /// Bytes the server sent.
    pub down_bytes: u64,
    /// Simulated seconds.
    pub seconds: f64,
}

impl Phase {
    /// Add another phase's bytes and seconds.
    pub fn add(&mut self, other: &Phase) {
        self.up_bytes += other.up_bytes;
        self.down_bytes += other.down_bytes;
        self.seconds += other.seconds;
    }
}

/// What secure aggregation cost a round (`rounds.jsonl`'s `secure_aggregation`), or a run
/// (the sum of its rounds, in `summary.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SecAggCost {
    /// Keys up, key directories down; seconds before training.
    pub keys: Phase,
    /// Encrypted shares up and routed down; seconds before training.
    pub shares: Phase,
    /// Masked vectors up; seconds: the mean client's masking compute (on its timeline).
    pub masked: Phase,
    /// Unmasking requests down, revealed shares up; seconds after the last upload,
    /// server compute included.
    pub unmask: Phase,
    /// The server's compute in the unmasking phase, simulated seconds.
    pub server_compute_s: f64,
    /// Masks the server regenerated: one per survivor, one per (survivor, dropped neighbour).
    pub masks_regenerated: usize,
    /// Homomorphic encryption: bytes between the server and the key holders (their key
    /// shares, the sums to decrypt, their decryption shares); not timed, not in the clients'
    /// bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_holder_bytes: u64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl SecAggCost {
    /// Bytes of every phase, both ways.
    pub fn bytes(&self) -> u64 {
        [self.keys, self.shares, self.masked, self.unmask]
            .iter()
            .map(|p| p.up_bytes + p.down_bytes)
            .sum()
    }

    /// Each phase with its label (for metrics and tables).
    pub fn phases(&self) -> [(&'static str, Phase); 4] {
        [
            ("keys", self.keys),
            ("shares", self.shares),
            ("masked", self.masked),
            ("unmask", self.unmask),
        ]
    }

    /// Add another round's cost.
    pub fn accumulate(&mut self, other: &SecAggCost) {
        self.keys.add(&other.keys);
        self.shares.add(&other.shares);
        self.masked.add(&other.masked);
        self.unmask.add(&other.unmask);
        self.server_compute_s += other.server_compute_s;
        self.masks_regenerated += other.masks_regenerated;
        self.key_holder_bytes += other.key_holder_bytes;
    }
}

/// A phase in which every client uploads, the server waits for all, then answers each:
/// it lasts the slowest upload plus the slowest download.
fn exchange(clients: &[(DeviceProfile, u64, u64)]) -> Phase {
    let slowest =
        |f: &dyn Fn(&(DeviceProfile, u64, u64)) -> f64| clients.iter().map(f).fold(0.0, f64::max);
    Phase {
        up_bytes: clients.iter().map(|c| c.1).sum(),
        down_bytes: clients.iter().map(|c| c.2).sum(),
        seconds: slowest(&|(p, up, _)| transfer_seconds(*up, p.up_mbps, p.latency_s))
            + slowest(&|(p, _, down)| transfer_seconds(*down, p.down_mbps, p.latency_s)),
    }
}

/// The keys and shares phases of the round's clients (each with its profile).
pub fn setup(clients: &[(DeviceProfile, ClientSetup)]) -> (Phase, Phase) {
    let keys: Vec<_> = (clients.iter())
        .map(|(p, s)| (*p, s.keys_up, s.keys_down))
        .collect();
    let shares: Vec<_> = (clients.iter())
        .map(|(p, s)| (*p, s.shares_up, s.shares_down))
        .collect();
    (exchange(&keys), exchange(&shares))
}

/// Bytes an element of the ring the default throughputs were measured in takes (80 bits).
pub const REFERENCE_ELEMENT_BYTES: usize = 10;

/// What `elements` elements of `ring` cost in elements of the measured 10-byte width: masks
/// are drawn and added a byte at a time, so a 7-byte element costs 0.7 of one
/// (`cargo bench --bench secagg` measures both widths).
pub fn reference_elements(elements: usize, ring: crate::secagg::Ring) -> f64 {
    (elements * ring.element_bytes()) as f64 / REFERENCE_ELEMENT_BYTES as f64
}

/// A client's masking compute: `masks` expansions over `elements` (reference) ring elements.
pub fn mask_seconds(masks: usize, elements: f64, compute: &Compute) -> f64 {
    masks as f64 * elements / compute.client_elements_per_s
}

/// The unmasking phase: each survivor gets the request (down) and sends its shares (up), the
/// server waits for all, then regenerates `masks` masks of `elements` (reference) elements. The server's
/// compute also counts summing the last masked vector in (the others were summed while later
/// uploads were still on their way).
pub fn unmask(
    survivors: &[(DeviceProfile, u64, u64)],
    masks: usize,
    elements: f64,
    compute: &Compute,
) -> (Phase, f64) {
    let slowest = (survivors.iter())
        .map(|(p, down, up)| {
            transfer_seconds(*down, p.down_mbps, p.latency_s)
                + transfer_seconds(*up, p.up_mbps, p.latency_s)
        })
        .fold(0.0, f64::max);
    let server = (masks + 1) as f64 * elements / compute.server_elements_per_s;
    let phase = Phase {
        up_bytes: survivors.iter().map(|s| s.2).sum(),
        down_bytes: survivors.iter().map(|s| s.1).sum(),
        seconds: slowest + server,
    };
    (phase, server)
}
