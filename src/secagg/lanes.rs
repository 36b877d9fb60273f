//! Ring elements in lanes: the low 64 bits of each element in one array, the bits above in
//! another, so that sums run as vectorised 64-bit additions with a carry. The masked vectors
//! travel in this layout (every low word, then every high word), the masks are drawn in it
//! part by part, and the server's running sum is kept in it. A narrow ring (b ≤ 64) has no
//! high lane: its elements travel as ⌈b/8⌉-byte words and add without carries.
//!
//! Lanes hold sums exact mod 2¹²⁸ (mod 2⁶⁴ when narrow: the high lane, or the only one,
//! wraps); an element is reduced into the ring when it is read, which is exact because 2ᵇ
//! divides 2¹²⁸ (2⁶⁴).

pub mod narrow;

use rayon::iter::Either;
use rayon::prelude::*;

use super::ring::encode_each;
use super::{Ring, SecAggError};
use crate::ids::ClientId;
use crate::strategy::fedavg::mean_of_exact_sums;

/// Elements per part: the unit of a mask's stream and of parallel work.
/// A multiple of 16 (a part's stream starts on a block); a part's 16 KiB of lanes stay in a
/// core's L1 cache while every upload or mask of a batch is added to it.
pub const PART: usize = 1024;

/// Bytes of an element's low word on the wire and in a mask's stream: 8, or ⌈b/8⌉ when the
/// ring is narrow.
pub fn low_bytes(ring: Ring) -> usize {
    ring.element_bytes().min(8)
}

/// Bytes of an element's high word on the wire and in a mask's stream: ⌈b/8⌉ − 8 (0 when
/// the ring is narrow).
pub fn high_bytes(ring: Ring) -> usize {
    ring.element_bytes().saturating_sub(8)
}

/// Elements as a low and a high lane (no high lane for a narrow ring), exact mod 2¹²⁸.
/// Equality is of the lanes as held (compare [`Lanes::elements`] for equality in a ring).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lanes {
    lo: Vec<u64>,
    /// Empty for a narrow ring, else as long as `lo`.
    hi: Vec<u64>,
}

impl Lanes {
    /// `len` zeros of `ring`.
    pub fn zeros(ring: Ring, len: usize) -> Self {
        Self {
            lo: vec![0; len],
            hi: if ring.is_narrow() {
                Vec::new()
            } else {
                vec![0; len]
            },
        }
    }

    /// Set every element to zero (the allocation kept).
    pub fn zero(&mut self) {
        self.lo.fill(0);
        self.hi.fill(0);
    }

    /// Whether these lanes have the shape of `ring`'s (a high lane exactly when it is wide).
    pub fn fits(&self, ring: Ring) -> bool {
        self.hi.len() == if ring.is_narrow() { 0 } else { self.lo.len() }
    }

    /// Client `client`'s update `values` with weight `weight` as lanes of `ring`: FedAvg's
    /// terms, then the weight ([`Ring::encode`]'s elements, without the 128-bit vector in
    /// between).
    ///
    /// # Errors
    /// A value FedAvg would reject (not finite, or |x| ≥ 2²³), or one past the ring's value
    /// bound.
    pub fn encode(
        ring: Ring,
        client: ClientId,
        values: &[f32],
        weight: u64,
    ) -> Result<Self, SecAggError> {
        let wide = !ring.is_narrow();
        let mut lanes = Self {
            lo: Vec::with_capacity(values.len() + 1),
            hi: Vec::with_capacity(if wide { values.len() + 1 } else { 0 }),
        };
        encode_each(ring, client, values, weight, |term| {
            lanes.lo.push(term as u64);
            if wide {
                lanes.hi.push((term >> 64) as u64);
            }
        })?;
        Ok(lanes)
    }

    /// Add one draw of `noise` (fixed-point steps) to every element but the trailing weight:
    /// distributed DP's discrete Gaussian shares ([`Ring::add_noise`] in lanes).
    pub fn add_noise(&mut self, noise: &mut crate::privacy::noise::DiscreteNoise) {
        let terms = self.len().saturating_sub(1);
        if self.hi.is_empty() {
            for lo in &mut self.lo[..terms] {
                *lo = lo.wrapping_add(noise.sample() as u64);
            }
            return;
        }
        let lanes = self.lo[..terms].iter_mut().zip(&mut self.hi[..terms]);
        for (lo, hi) in lanes {
            let z = i128::from(noise.sample()) as u128;
            let (sum, carry) = lo.overflowing_add(z as u64);
            *lo = sum;
            *hi = hi
                .wrapping_add((z >> 64) as u64)
                .wrapping_add(u64::from(carry));
        }
    }

    /// `xs`, elements of `ring`, in lanes.
    pub fn from_elements(ring: Ring, xs: &[u128]) -> Self {
        Self {
            lo: xs.iter().map(|&x| x as u64).collect(),
            hi: match ring.is_narrow() {
                true => Vec::new(),
                false => xs.iter().map(|&x| (x >> 64) as u64).collect(),
            },
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.lo.len()
    }

    /// Whether no elements are held.
    pub fn is_empty(&self) -> bool {
        self.lo.is_empty()
    }

    /// Element `i`, reduced into `ring`.
    pub fn element(&self, i: usize, ring: Ring) -> u128 {
        let hi = self.hi.get(i).copied().unwrap_or(0);
        ring.reduce(u128::from(self.lo[i]) | u128::from(hi) << 64)
    }

    /// The elements, reduced into `ring`.
    pub fn elements(&self, ring: Ring) -> Vec<u128> {
        (0..self.len()).map(|i| self.element(i, ring)).collect()
    }

    /// An unmasked sum of encoded vectors as FedAvg's exact sums and their total weight
    /// ([`Ring::decode_sums`], read from the lanes).
    pub fn decode_sums(&self, ring: Ring) -> (Vec<i128>, u64) {
        if !(self.hi.is_empty() && ring.is_narrow()) {
            return ring.decode(self.len(), |i| self.element(i, ring));
        }
        // One word an element: its low b bits, sign-extended.
        let shift = 64 - ring.bits();
        let signed = |x: u64| i128::from(((x << shift) as i64) >> shift);
        let Some((&last, terms)) = self.lo.split_last() else {
            return (Vec::new(), 0);
        };
        let weight = u64::try_from(signed(last)).unwrap_or(0);
        let pool = crate::strategy::fedavg::pool();
        (
            pool.install(|| terms.par_iter().map(|&x| signed(x)).collect()),
            weight,
        )
    }

    /// The mean update of an unmasked sum (None when the weights sum to 0).
    pub fn decode_mean(&self, ring: Ring) -> Option<Vec<f32>> {
        let (exact, weight) = self.decode_sums(ring);
        (weight > 0).then(|| mean_of_exact_sums(&exact, weight))
    }

    /// The elements reduced into `ring` as wire bytes: every low word ([`low_bytes`]
    /// little-endian bytes each), then every high word ([`high_bytes`] each).
    pub fn to_bytes(&self, ring: Ring) -> Vec<u8> {
        debug_assert!(self.fits(ring), "lanes of another ring's shape");
        let (lb, hb) = (low_bytes(ring), high_bytes(ring));
        let mask = ring.reduce(u128::MAX);
        let (low_mask, top) = (mask as u64, (mask >> 64) as u64);
        let mut out = vec![0u8; self.len() * (lb + hb)];
        let (low, high) = out.split_at_mut(lb * self.len());
        for (b, w) in low.chunks_exact_mut(lb).zip(&self.lo) {
            b.copy_from_slice(&(w & low_mask).to_le_bytes()[..lb]);
        }
        for (b, w) in high.chunks_exact_mut(hb.max(1)).zip(&self.hi) {
            b.copy_from_slice(&(w & top).to_le_bytes()[..hb]);
        }
        out
    }

    /// Elements from [`Lanes::to_bytes`]'s bytes (None: not a whole number of elements, or an
    /// element outside the ring).
    pub fn from_bytes(ring: Ring, bytes: &[u8]) -> Option<Self> {
        let w = ring.element_bytes();
        if !bytes.len().is_multiple_of(w) {
            return None;
        }
        let mut lanes = Self::zeros(ring, bytes.len() / w);
        (lanes.add_uploads(ring, &[bytes], false) == [true]).then_some(lanes)
    }

    /// Add (`negate` false) or subtract each of `uploads` — wire bytes of [`Lanes::len`]
    /// elements in `ring` — in parallel on the fold's pool, in two chunks a thread: each
    /// upload streams through a chunk of the sum in long runs the prefetcher follows
    /// (L1-sized parts, jumping between uploads every 8 KB, summed 100 uploads of 460,801
    /// elements 1.5× slower on a 2-core AMD EPYC). Returns, per upload,
    /// whether all its elements were in the ring (no bit set above b); one that was not can
    /// be taken back out by subtracting it: the lanes are then as if it never came.
    ///
    /// # Panics
    /// An upload of another length (callers check it on arrival), or lanes of another
    /// ring's shape.
    pub fn add_uploads(&mut self, ring: Ring, uploads: &[&[u8]], negate: bool) -> Vec<bool> {
        let (lb, hb) = (low_bytes(ring), high_bytes(ring));
        assert!(uploads.iter().all(|u| u.len() == self.len() * (lb + hb)));
        assert!(self.fits(ring), "lanes of another ring's shape");
        let all = |a: Vec<bool>, b: Vec<bool>| a.iter().zip(b).map(|(x, y)| *x && y).collect();
        let len = self.len();
        let pool = crate::strategy::fedavg::pool();
        let chunk = (len.div_ceil(2 * pool.current_num_threads()))
            .next_multiple_of(PART)
            .max(PART);
        pool.install(|| {
            self.par_chunks(chunk)
                .map(|(part, lo, hi)| {
                    let (a, b) = (part * chunk, part * chunk + lo.len());
                    let in_ring = |u: &&[u8]| {
                        let l = &u[lb * a..lb * b];
                        let h = &u[lb * len + hb * a..lb * len + hb * b];
                        !ring.above(add_words(ring, negate, lo, hi, l, h))
                    };
                    uploads.iter().map(in_ring).collect::<Vec<bool>>()
                })
                .reduce(|| vec![true; uploads.len()], all)
        })
    }

    /// The parts ([`PART`] elements), in parallel: (index, low lane, high lane — empty when
    /// the ring is narrow).
    pub(crate) fn par_parts(
        &mut self,
    ) -> impl IndexedParallelIterator<Item = (usize, &mut [u64], &mut [u64])> {
        self.par_chunks(PART)
    }

    /// Chunks of `size` elements, in parallel: (index, low lane, high lane).
    fn par_chunks(
        &mut self,
        size: usize,
    ) -> impl IndexedParallelIterator<Item = (usize, &mut [u64], &mut [u64])> {
        let chunks = if self.hi.is_empty() {
            let none = |lo| (lo, <&mut [u64]>::default());
            Either::Left(self.lo.par_chunks_mut(size).map(none))
        } else {
            let lanes = self.lo.par_chunks_mut(size);
            Either::Right(lanes.zip(self.hi.par_chunks_mut(size)))
        };
        chunks.enumerate().map(|(i, (lo, hi))| (i, lo, hi))
    }
}

/// Add (or subtract) words of `ring`'s elements to the lanes: low words `l` ([`low_bytes`]
/// each) and high words `h` ([`high_bytes`] each), the low lane's carry (or borrow) into the
/// high lane when the ring is wide. Returns the OR of the top words (the high words, or the
/// low ones when the ring is narrow) for [`Ring::above`].
pub(crate) fn add_words(
    ring: Ring,
    negate: bool,
    lo: &mut [u64],
    hi: &mut [u64],
    l: &[u8],
    h: &[u8],
) -> u64 {
    match (ring.is_narrow(), ring.element_bytes()) {
        (true, w) => narrow::add(w, negate, lo, l),
        (false, 9) => words::<1>(negate, lo, hi, l, h),
        (false, 10) => words::<2>(negate, lo, hi, l, h),
        (false, 11) => words::<3>(negate, lo, hi, l, h),
        (false, 12) => words::<4>(negate, lo, hi, l, h),
        (false, 13) => words::<5>(negate, lo, hi, l, h),
        (false, 14) => words::<6>(negate, lo, hi, l, h),
        (false, 15) => words::<7>(negate, lo, hi, l, h),
        (false, _) => words::<8>(negate, lo, hi, l, h),
    }
}

fn words<const H: usize>(negate: bool, lo: &mut [u64], hi: &mut [u64], l: &[u8], h: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked above.
        return unsafe {
            match negate {
                false => words_avx2::<H, false>(lo, hi, l, h),
                true => words_avx2::<H, true>(lo, hi, l, h),
            }
        };
    }
    match negate {
        false => words_body::<H, false>(lo, hi, l, h),
        true => words_body::<H, true>(lo, hi, l, h),
    }
}

/// [`words_body`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn words_avx2<const H: usize, const NEG: bool>(
    lo: &mut [u64],
    hi: &mut [u64],
    l: &[u8],
    h: &[u8],
) -> u64 {
    words_body::<H, NEG>(lo, hi, l, h)
}

#[inline(always)]
fn words_body<const H: usize, const NEG: bool>(
    lo: &mut [u64],
    hi: &mut [u64],
    l: &[u8],
    h: &[u8],
) -> u64 {
    let low = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let high = |b: &[u8]| {
        let mut le = [0u8; 8];
        le[..H].copy_from_slice(b);
        u64::from_le_bytes(le)
    };
    let step = |acc: &mut u64, top: &mut u64, x: u64, y: u64| {
        let (s, c) = if NEG {
            acc.overflowing_sub(x)
        } else {
            acc.overflowing_add(x)
        };
        *acc = s;
        *top = if NEG {
            top.wrapping_sub(y).wrapping_sub(u64::from(c))
        } else {
            top.wrapping_add(y).wrapping_add(u64::from(c))
        };
    };
    let lanes = lo.iter_mut().zip(hi.iter_mut());
    let mut above = 0;
    for ((acc, top), (b, c)) in lanes.zip(l.chunks_exact(8).zip(h.chunks_exact(H))) {
        let y = high(c);
        above |= y;
        step(acc, top, low(b), y);
    }
    above
}
