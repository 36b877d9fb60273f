//! The ring Z/2ᵇ the masked vectors live in, and FedAvg's exact terms in it.
//!
//! A client's vector is FedAvg's integer terms trunc(x·2⁴⁰)·w of its update (see
//! [`crate::strategy::fedavg::fixed_term`]) followed by its weight w, each reduced mod 2ᵇ.
//! A ring carries a bound T on |trunc(x·2⁴⁰)|: 2⁶³ by default (FedAvg accepts |x| < 2²³
//! only), or ⌊B·2⁴⁰⌋ for a declared bound |x| ≤ B ([`Ring::with_value_bound`]; clients refuse
//! to encode a value past it). A round whose weights sum to W has sums of magnitude at most
//! T·W: with b ≥ 1 + ⌈log₂(T·W + 1)⌉ no sum wraps, and the sum, read back as a b-bit
//! two's-complement integer, is FedAvg's exact sum — the mean is FedAvg's bit for bit.
//! [`Ring::sized`] picks that size; [`Ring::check`] refuses a smaller one. Unbounded, that is
//! 64 + ⌈log₂(W + 1)⌉ bits; with B = 1 and W = 1,080, 52 (7 bytes an element, not 10).

use super::{ParamsError, SecAggError};
use crate::ids::ClientId;
use crate::strategy::fedavg::{fixed_term, mean_of_exact_sums};

/// 2⁴⁰: the fixed-point scale of FedAvg's terms.
const SCALE: f64 = (1u64 << 40) as f64;

/// The bound on |trunc(x·2⁴⁰)| without a declared value bound (|x| < 2²³).
const UNBOUNDED_TERM: u64 = 1 << 63;

/// Z/2ᵇ, 1 ≤ b ≤ 128, with elements held in `u128`, and the bound on its encoded terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    bits: u32,
    /// T: every encoded |trunc(x·2⁴⁰)| is at most this.
    max_term: u64,
    /// The declared bound B it was made from (its f64 bits), for messages.
    declared: Option<u64>,
}

impl Ring {
    /// Z/2^`bits`, for any value FedAvg accepts.
    ///
    /// # Errors
    /// `bits` outside 1..=128.
    pub fn new(bits: u32) -> Result<Self, SecAggError> {
        if !(1..=128).contains(&bits) {
            return Err(SecAggError::Params(ParamsError::RingBits { bits }));
        }
        Ok(Self {
            bits,
            max_term: UNBOUNDED_TERM,
            declared: None,
        })
    }

    /// This ring for values with |x| ≤ `bound` only: clients refuse to encode others, and
    /// sums need fewer bits.
    ///
    /// # Errors
    /// `bound` not finite, not above 0, or not below 2²³ (FedAvg's own limit).
    pub fn with_value_bound(self, bound: f64) -> Result<Self, SecAggError> {
        if !(bound.is_finite() && bound > 0.0 && bound < f64::from(1u32 << 23)) {
            return Err(SecAggError::Params(ParamsError::ValueBound { bound }));
        }
        let max_term = (bound * SCALE).floor() as u64;
        let declared = Some(bound.to_bits());
        Ok(Self {
            max_term,
            declared,
            ..self
        })
    }

    /// The smallest ring whose sums cannot wrap when the weights sum to at most `weight`
    /// and values are any FedAvg accepts.
    pub fn for_weight(weight: u64) -> Self {
        Self {
            bits: need(UNBOUNDED_TERM, weight),
            max_term: UNBOUNDED_TERM,
            declared: None,
        }
    }

    /// The smallest ring whose sums cannot wrap when the weights sum to at most `weight`
    /// and values stay within ±`value_bound` (None: any value FedAvg accepts).
    ///
    /// # Errors
    /// A bound [`Ring::with_value_bound`] refuses.
    pub fn sized(weight: u64, value_bound: Option<f64>) -> Result<Self, SecAggError> {
        let widest = Self::for_weight(weight);
        let Some(bound) = value_bound else {
            return Ok(widest);
        };
        let ring = widest.with_value_bound(bound)?;
        Ok(Self {
            bits: ring.bits_needed(weight),
            ..ring
        })
    }

    /// 1 + ⌈log₂(T·weight + 1)⌉: the bits no sum of terms of total weight `weight` outgrows
    /// (64 + ⌈log₂(weight + 1)⌉ for values without a declared bound).
    pub fn bits_needed(&self, weight: u64) -> u32 {
        need(self.max_term, weight)
    }

    /// The declared bound B on values, if any (values are held to ⌊B·2⁴⁰⌋ steps of 2⁻⁴⁰).
    pub fn value_bound(&self) -> Option<f64> {
        self.declared.map(f64::from_bits)
    }

    /// Refuse a ring in which sums of total weight `weight` could wrap.
    ///
    /// # Errors
    /// The ring is narrower than [`Ring::bits_needed`], naming the bound.
    pub fn check(&self, weight: u64) -> Result<(), SecAggError> {
        let need = self.bits_needed(weight);
        if self.bits < need {
            return Err(SecAggError::Params(ParamsError::RingWraps {
                bits: self.bits,
                weight,
                need,
                bound: self.value_bound(),
            }));
        }
        Ok(())
    }

    /// b.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Whether elements fit one 64-bit word (b ≤ 64): the lanes then hold no high words.
    pub fn is_narrow(&self) -> bool {
        self.bits <= 64
    }

    /// Bytes one element takes on the wire: ⌈b / 8⌉.
    pub fn element_bytes(&self) -> usize {
        self.bits.div_ceil(8) as usize
    }

    /// Whether `word`, an element's top word (its bits from 64 on in a wide ring, the whole
    /// element in a narrow one), has a bit set above the ring.
    #[inline]
    pub fn above(&self, word: u64) -> bool {
        let top = if self.is_narrow() {
            self.bits
        } else {
            self.bits - 64
        };
        top < 64 && word >> top != 0
    }

    fn mask(&self) -> u128 {
        if self.bits == 128 {
            u128::MAX
        } else {
            (1u128 << self.bits) - 1
        }
    }

    /// `a + b` in the ring.
    #[inline]
    pub fn add(&self, a: u128, b: u128) -> u128 {
        a.wrapping_add(b) & self.mask()
    }

    /// `a − b` in the ring.
    #[inline]
    pub fn sub(&self, a: u128, b: u128) -> u128 {
        a.wrapping_sub(b) & self.mask()
    }

    /// `x` reduced into the ring.
    #[inline]
    pub fn reduce(&self, x: u128) -> u128 {
        x & self.mask()
    }

    /// An element read as a b-bit two's-complement integer.
    pub fn signed(&self, x: u128) -> i128 {
        if self.bits == 128 {
            x as i128
        } else if x >> (self.bits - 1) & 1 == 1 {
            x as i128 - (1i128 << self.bits)
        } else {
            x as i128
        }
    }

    /// Client `client`'s update `values` with weight `weight`, as ring elements: FedAvg's
    /// terms, then the weight.
    ///
    /// # Errors
    /// A value FedAvg would reject (not finite, or |x| ≥ 2²³), or one past the ring's value
    /// bound.
    pub fn encode(
        &self,
        client: ClientId,
        values: &[f32],
        weight: u64,
    ) -> Result<Vec<u128>, SecAggError> {
        let mut out = Vec::with_capacity(values.len() + 1);
        encode_each(*self, client, values, weight, |term| {
            out.push(self.reduce(term as u128))
        })?;
        Ok(out)
    }

    /// Add one draw of `noise` (fixed-point steps) to each of FedAvg's terms in `elements`,
    /// every element but the trailing weight: the distributed discrete Gaussian.
    pub fn add_noise(
        &self,
        elements: &mut [u128],
        noise: &mut crate::privacy::noise::DiscreteNoise,
    ) {
        let terms = elements.len().saturating_sub(1);
        for x in &mut elements[..terms] {
            *x = self.add(*x, i128::from(noise.sample()) as u128);
        }
    }

    /// The mean update of an unmasked sum of encoded vectors (None when the weights sum to 0).
    pub fn decode_mean(&self, sum: &[u128]) -> Option<Vec<f32>> {
        let (exact, weight) = self.decode_sums(sum);
        (weight > 0).then(|| mean_of_exact_sums(&exact, weight))
    }

    /// An unmasked sum of encoded vectors as FedAvg's exact sums and their total weight (0
    /// when the weight is not a positive 64-bit integer).
    pub fn decode_sums(&self, sum: &[u128]) -> (Vec<i128>, u64) {
        self.decode(sum.len(), |i| sum[i])
    }

    /// [`Ring::decode_sums`] of the `len` elements `element(i)` gives.
    pub(crate) fn decode(
        &self,
        len: usize,
        element: impl Fn(usize) -> u128 + Sync,
    ) -> (Vec<i128>, u64) {
        let Some(last) = len.checked_sub(1) else {
            return (Vec::new(), 0);
        };
        let weight = u64::try_from(self.signed(element(last))).unwrap_or(0);
        let sums = crate::strategy::fedavg::pool().install(|| {
            use rayon::prelude::*;
            (0..last)
                .into_par_iter()
                .map(|i| self.signed(element(i)))
                .collect()
        });
        (sums, weight)
    }
}

/// 1 + ⌈log₂(max_term·weight + 1)⌉ (the weight itself is an element too: at least 1 term).
fn need(max_term: u64, weight: u64) -> u32 {
    let largest = u128::from(max_term.max(1)) * u128::from(weight);
    1 + (u128::BITS - largest.leading_zeros())
}

/// Hand FedAvg's terms of client `client`'s update `values` (weight `weight`) to `push`, then
/// the weight: the encoding [`Ring::encode`] and [`super::lanes::Lanes::encode`] store.
///
/// # Errors
/// A value FedAvg would reject (not finite, or |x| ≥ 2²³), or one past `ring`'s value bound;
/// the terms before it were pushed.
pub(crate) fn encode_each(
    ring: Ring,
    client: ClientId,
    values: &[f32],
    weight: u64,
    mut push: impl FnMut(i128),
) -> Result<(), SecAggError> {
    let past = |x: f32| (f64::from(x) * SCALE).trunc().abs() > ring.max_term as f64;
    for (index, &x) in values.iter().enumerate() {
        let term = fixed_term(index, x, weight)
            .map_err(|source| SecAggError::Encode { client, source })?;
        if let Some(bound) = ring.value_bound().filter(|_| past(x)) {
            let value = x;
            return Err(SecAggError::PastBound {
                client,
                index,
                value,
                bound,
            });
        }
        push(term);
    }
    push(i128::from(weight));
    Ok(())
}
