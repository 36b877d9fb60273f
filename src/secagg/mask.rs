//! The masks: one AES-256-CTR stream per seed, expanded into ring elements part by part of a
//! vector and summed lane-wise, so a server that removes a hundred masks reads its sum once.
//!
//! A mask's elements come from its stream a part at a time: part p covers elements
//! p·P .. p·P + P' (P = [`MASK_PART`], P' ≤ P at the end) and takes the stream's bytes from
//! p·P·w on, w = 8 + h bytes an element — first P' little-endian 64-bit low words, then P'
//! little-endian h-byte high words (h = 0, 2, 4 or 8: the least that holds the ring's bits
//! above 64). Element i is lo_i + 2⁶⁴·hi_i reduced into the ring: uniform, as the words hold
//! at least b bits. Low and high words in two arrays let a part's masks be summed in 64-bit
//! lanes with a carry — a loop the compiler vectorises — and added into the ring sum once.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::crypto::Secret;
use super::Ring;

/// Elements per part of a vector: a multiple of 16, so each part starts on a block of the
/// stream; 16 KiB of sum and its lanes stay in a core's L2 cache while every mask is added.
pub const MASK_PART: usize = 1024;

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

/// Bytes of a high word for `ring`: the least of 0, 2, 4, 8 that holds its bits above 64.
pub fn high_bytes(ring: Ring) -> usize {
    match ring.bits() {
        ..=64 => 0,
        65..=80 => 2,
        81..=96 => 4,
        _ => 8,
    }
}

/// Add (`negate` false) or subtract the mask of `seed` to `v`: [`apply_masks`] with one mask.
pub fn apply_mask(ring: Ring, seed: &Secret, negate: bool, v: &mut [u128]) {
    apply_masks(ring, &[(MaskStream::new(seed), negate)], v);
}

/// Add (`negate` false) or subtract each of `masks` to `v` in `ring`. Parts of the vector run
/// in parallel on the fold's pool; in each, the masks are summed in lanes and the lanes added
/// to the part once. Every part reads its own offsets of the streams, and the ring's addition
/// is exact, so the result is the same whatever the thread count.
pub fn apply_masks(ring: Ring, masks: &[(MaskStream, bool)], v: &mut [u128]) {
    use rayon::prelude::*;
    let w = 8 + high_bytes(ring);
    crate::strategy::fedavg::pool().install(|| {
        v.par_chunks_mut(MASK_PART).enumerate().for_each_init(
            || Lanes::new(w),
            |lanes, (part, chunk)| {
                lanes.start(part * MASK_PART * w, chunk.len());
                for (stream, negate) in masks {
                    stream.keystream(&lanes.counters, &mut lanes.stream);
                    lanes.accumulate(*negate);
                }
                lanes.add_into(ring, chunk);
            },
        )
    });
}

/// One part's masks summed so far, as low and high 64-bit words; its counters; a stream
/// buffer; the stream bytes an element takes.
struct Lanes {
    lo: Vec<u64>,
    hi: Vec<u64>,
    counters: Vec<Block>,
    stream: Vec<Block>,
    w: usize,
}

impl Lanes {
    fn new(w: usize) -> Self {
        let blocks = (MASK_PART * w).div_ceil(16);
        Self {
            lo: Vec::with_capacity(MASK_PART),
            hi: Vec::with_capacity(MASK_PART),
            counters: Vec::with_capacity(blocks),
            stream: Vec::with_capacity(blocks),
            w,
        }
    }

    /// Zero lanes for a part of `len` elements whose stream bytes start at `offset`.
    fn start(&mut self, offset: usize, len: usize) {
        self.lo.clear();
        self.lo.resize(len, 0);
        self.hi.clear();
        self.hi.resize(len, 0);
        counters(offset, len * self.w, &mut self.counters);
        self.stream.resize(self.counters.len(), Block::default());
    }

    /// Add or subtract the stream's bytes into the lanes.
    fn accumulate(&mut self, negate: bool) {
        let n = self.lo.len();
        let bytes = &Block::slice_as_flattened(&self.stream)[..n * self.w];
        let (l, h) = bytes.split_at(8 * n);
        let (lo, hi) = (&mut self.lo, &mut self.hi);
        match (self.w - 8, negate) {
            (0, false) => lanes::<0, false>(lo, hi, l, h),
            (0, true) => lanes::<0, true>(lo, hi, l, h),
            (2, false) => lanes::<2, false>(lo, hi, l, h),
            (2, true) => lanes::<2, true>(lo, hi, l, h),
            (4, false) => lanes::<4, false>(lo, hi, l, h),
            (4, true) => lanes::<4, true>(lo, hi, l, h),
            (_, false) => lanes::<8, false>(lo, hi, l, h),
            (_, true) => lanes::<8, true>(lo, hi, l, h),
        }
    }

    /// Add the lanes' sums into `chunk`, reduced into the ring.
    fn add_into(&self, ring: Ring, chunk: &mut [u128]) {
        for ((x, &lo), &hi) in chunk.iter_mut().zip(&self.lo).zip(&self.hi) {
            *x = ring.add(*x, u128::from(lo) | u128::from(hi) << 64);
        }
    }
}

/// Σ ± (lo + 2⁶⁴·hi) in 64-bit lanes with the carry (or borrow) into the high lane: the sums
/// are exact mod 2¹²⁸. AVX2 where the CPU has it (the same loop, compiled for it).
fn lanes<const H: usize, const NEG: bool>(lo: &mut [u64], hi: &mut [u64], l: &[u8], h: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe { lanes_avx2::<H, NEG>(lo, hi, l, h) };
    }
    lanes_body::<H, NEG>(lo, hi, l, h)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_avx2<const H: usize, const NEG: bool>(lo: &mut [u64], hi: &mut [u64], l: &[u8], h: &[u8]) {
    lanes_body::<H, NEG>(lo, hi, l, h)
}

#[inline(always)]
fn lanes_body<const H: usize, const NEG: bool>(lo: &mut [u64], hi: &mut [u64], l: &[u8], h: &[u8]) {
    let word = |b: &[u8]| {
        let mut le = [0u8; 8];
        le[..H].copy_from_slice(b);
        u64::from_le_bytes(le)
    };
    let low = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    if H == 0 {
        // A ring of 64 bits: the high lane is reduced away.
        for (acc, b) in lo.iter_mut().zip(l.chunks_exact(8)) {
            *acc = if NEG {
                acc.wrapping_sub(low(b))
            } else {
                acc.wrapping_add(low(b))
            };
        }
        return;
    }
    let lanes = lo.iter_mut().zip(hi.iter_mut());
    for ((acc, top), (b, c)) in lanes.zip(l.chunks_exact(8).zip(h.chunks_exact(H.max(1)))) {
        let (x, y) = (low(b), word(c));
        if NEG {
            let (s, borrow) = acc.overflowing_sub(x);
            *acc = s;
            *top = top.wrapping_sub(y).wrapping_sub(u64::from(borrow));
        } else {
            let (s, carry) = acc.overflowing_add(x);
            *acc = s;
            *top = top.wrapping_add(y).wrapping_add(u64::from(carry));
        }
    }
}
