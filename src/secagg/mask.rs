//! The masks: one AES-256-CTR stream per seed, drawn in the lanes layout
//! ([`super::lanes`]) part by part of a vector, so a server that removes a hundred masks
//! passes over its sum once, each part staying in cache while every mask is added to it.
//!
//! Part p of a mask covers elements p·P .. p·P + P' (P = [`PART`], P' ≤ P at the end) and
//! takes its stream's bytes from p·P·w on, w = ⌈b/8⌉ bytes an element: first P' little-endian
//! 64-bit low words, then P' little-endian high words of w − 8 bytes. Element i is lo_i + 2⁶⁴·hi_i reduced into the ring: uniform, as the words
//! hold at least b bits.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use rayon::prelude::*;

use super::crypto::Secret;
use super::lanes::{add_words, Lanes, PART};
use super::Ring;

/// The mask stream of one seed: AES-256 in counter mode, the key the 32-byte seed, the 128-bit
/// big-endian counter from zero — OpenSSL's `EVP_aes_256_ctr` with a zero IV, the generator of
/// Google's production SecAgg (`fcp/secagg/shared/aes_ctr_prng.cc`). Any block can be made
/// directly, so parts of a vector are masked in parallel from their own offsets.
#[derive(Clone)]
pub struct MaskStream(Aes256);

/// One 16-byte block of a stream (a counter before encryption, key stream after).
pub type Block = Array<u8, U16>;

impl MaskStream {
    /// The stream of `seed`.
    pub fn new(seed: &Secret) -> Self {
        Self(Aes256::new(seed.into()))
    }

    /// The stream's blocks at `counters` (see [`counters`]), into `out` (as many).
    ///
    /// # Panics
    /// `out` of another length than `counters`.
    pub fn keystream(&self, counters: &[Block], out: &mut [Block]) {
        (self.0.encrypt_blocks_b2b(counters, out)).expect("as many blocks out as counters");
    }

    /// The stream's bytes from byte `offset` (a multiple of 16) on, into `out`.
    pub fn fill(&self, offset: usize, out: &mut [u8]) {
        let mut at = Vec::new();
        counters(offset, out.len(), &mut at);
        let mut stream = vec![Block::default(); at.len()];
        self.keystream(&at, &mut stream);
        out.copy_from_slice(&Block::slice_as_flattened(&stream)[..out.len()]);
    }
}

/// Into `out`, the counter blocks of a stream's bytes `offset..offset + len` (`offset` a
/// multiple of 16; the last block may reach past the end): the same for every stream, so a
/// part's counters are written once for all its masks.
pub fn counters(offset: usize, len: usize, out: &mut Vec<Block>) {
    debug_assert!(offset.is_multiple_of(16), "a part starts on a block");
    let first = (offset / 16) as u128;
    out.clear();
    out.extend((first..first + len.div_ceil(16) as u128).map(|i| Array::from(i.to_be_bytes())));
}

impl std::fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskStream(AES-256-CTR)")
    }
}

/// Add (`negate` false) or subtract the mask of `seed` to `v`: [`apply_masks`] with one mask.
pub fn apply_mask(ring: Ring, seed: &Secret, negate: bool, v: &mut Lanes) {
    apply_masks(ring, &[(MaskStream::new(seed), negate)], v);
}

/// Add (`negate` false) or subtract each of `masks` to `v` in `ring`. Parts of the vector run
/// in parallel on the fold's pool; each part's counters are written once for all the masks.
/// Every part reads its own offsets of the streams, and the lanes' additions are exact, so
/// the result is the same whatever the thread count.
pub fn apply_masks(ring: Ring, masks: &[(MaskStream, bool)], v: &mut Lanes) {
    let w = ring.element_bytes();
    let blocks = (PART * w).div_ceil(16);
    let scratch = || (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
    crate::strategy::fedavg::pool().install(|| {
        v.par_parts()
            .for_each_init(scratch, |(at, stream), (part, lo, hi)| {
                counters(part * PART * w, lo.len() * w, at);
                stream.resize(at.len(), Block::default());
                for (mask, negate) in masks {
                    mask.keystream(at, stream);
                    let bytes = &Block::slice_as_flattened(stream)[..lo.len() * w];
                    let (l, h) = bytes.split_at(8 * lo.len());
                    add_words(w - 8, *negate, lo, hi, l, h);
                }
            })
    });
}
