//! The masks: one AES-256-CTR stream per seed, drawn in the lanes layout
//! ([`super::lanes`]) part by part of a vector, so a server that removes a hundred masks
//! passes over its sum once, each part staying in cache while every mask is added to it.
//!
//! Part p of a mask covers elements p·P .. p·P + P' (P = [`PART`], P' ≤ P at the end) and
//! takes its stream's bytes from p·P·w on, w = ⌈b/8⌉ bytes an element: first P' little-endian
//! 64-bit low words, then P' little-endian high words of w − 8 bytes (a narrow ring, b ≤ 64:
//! P' words of w bytes, no high words). Element i is lo_i + 2⁶⁴·hi_i reduced into the ring:
//! uniform, as the words hold at least b bits.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use rayon::prelude::*;

use super::crypto::Secret;
use super::lanes::{add_words, low_bytes, Lanes, PART};
use super::vaes::RoundKeys;
use super::Ring;

/// The mask stream of one seed: AES-256 in counter mode, the key the 32-byte seed, the 128-bit
/// big-endian counter from zero — OpenSSL's `EVP_aes_256_ctr` with a zero IV, the generator of
/// Google's production SecAgg (`fcp/secagg/shared/aes_ctr_prng.cc`). Any block can be made
/// directly, so parts of a vector are masked in parallel from their own offsets. Drawn with
/// VAES where the CPU has it ([`super::vaes`]), with the `aes` crate elsewhere.
#[derive(Clone)]
pub struct MaskStream {
    aes: Aes256,
    vaes: Option<RoundKeys>,
}

/// One 16-byte block of a stream (a counter before encryption, key stream after).
pub type Block = Array<u8, U16>;

impl MaskStream {
    /// The stream of `seed`.
    pub fn new(seed: &Secret) -> Self {
        Self {
            aes: Aes256::new(seed.into()),
            vaes: RoundKeys::new(seed),
        }
    }

    /// The stream of `seed` drawn by the `aes` crate only, whatever the CPU (the reference
    /// the VAES loop is tested against).
    pub fn portable(seed: &Secret) -> Self {
        Self {
            aes: Aes256::new(seed.into()),
            vaes: None,
        }
    }

    /// Whether this stream is drawn with VAES.
    pub fn is_vaes(&self) -> bool {
        self.vaes.is_some()
    }

    /// The stream's blocks `first..first + out.len()` into `out`.
    pub fn keystream(&self, first: u64, out: &mut [Block]) {
        if let Some(keys) = &self.vaes {
            if keys.keystream(first, out) {
                return;
            }
        }
        let first = u128::from(first);
        for (i, block) in out.iter_mut().enumerate() {
            *block = Array::from((first + i as u128).to_be_bytes());
        }
        self.aes.encrypt_blocks(out);
    }

    /// The stream's bytes from byte `offset` (a multiple of 16) on, into `out`.
    pub fn fill(&self, offset: usize, out: &mut [u8]) {
        debug_assert!(offset.is_multiple_of(16), "a stream is read from a block");
        let mut stream = vec![Block::default(); out.len().div_ceil(16)];
        self.keystream((offset / 16) as u64, &mut stream);
        out.copy_from_slice(&Block::slice_as_flattened(&stream)[..out.len()]);
    }
}

impl std::fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vaes {
            Some(_) => f.write_str("MaskStream(AES-256-CTR, VAES)"),
            None => f.write_str("MaskStream(AES-256-CTR, aes crate)"),
        }
    }
}

/// Add (`negate` false) or subtract the mask of `seed` to `v`: [`apply_masks`] with one mask.
pub fn apply_mask(ring: Ring, seed: &Secret, negate: bool, v: &mut Lanes) {
    apply_masks(ring, &[(MaskStream::new(seed), negate)], v);
}

/// Add (`negate` false) or subtract each of `masks` to `v` in `ring`. Parts of the vector run
/// in parallel on the fold's pool. A part's stream buffer is drawn once a mask and stays in L1.
/// Every part reads its own offsets of the streams, and the lanes' additions are exact, so
/// the result is the same whatever the thread count.
pub fn apply_masks(ring: Ring, masks: &[(MaskStream, bool)], v: &mut Lanes) {
    assert!(v.fits(ring), "lanes of another ring's shape");
    let w = ring.element_bytes();
    let scratch = || Vec::with_capacity((PART * w).div_ceil(16));
    crate::strategy::fedavg::pool().install(|| {
        v.par_parts()
            .for_each_init(scratch, |stream: &mut Vec<Block>, (part, lo, hi)| {
                // A part starts on a block: PART·w is a multiple of 16.
                let first = (part * PART * w / 16) as u64;
                stream.resize((lo.len() * w).div_ceil(16), Block::default());
                for (mask, negate) in masks {
                    mask.keystream(first, stream);
                    let bytes = &Block::slice_as_flattened(stream)[..lo.len() * w];
                    let (l, h) = bytes.split_at(low_bytes(ring) * lo.len());
                    add_words(ring, *negate, lo, hi, l, h);
                }
            })
    });
}
