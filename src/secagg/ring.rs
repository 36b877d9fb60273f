//! The ring Z/2ᵇ the masked vectors live in, and FedAvg's exact terms in it.
//!
//! A client's vector is FedAvg's integer terms trunc(x·2⁴⁰)·w of its update (see
//! [`crate::strategy::fedavg::fixed_term`]) followed by its weight w, each reduced mod 2ᵇ.
//! |trunc(x·2⁴⁰)| < 2⁶³ (FedAvg accepts |x| < 2²³ only), so a round whose weights sum to W
//! has sums below 2⁶³·W in magnitude: with b ≥ 64 + ⌈log₂(W + 1)⌉ no sum wraps, and the sum,
//! read back as a b-bit two's-complement integer, is FedAvg's exact sum — the mean is FedAvg's
//! bit for bit. [`Ring::for_weight`] picks that size; [`Ring::check`] refuses a smaller one.

use super::{ParamsError, SecAggError};
use crate::ids::ClientId;
use crate::strategy::fedavg::{fixed_term, mean_of_exact_sums};

/// Z/2ᵇ, 64 ≤ b ≤ 128, with elements held in `u128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    bits: u32,
}

impl Ring {
    /// Z/2^`bits`.
    ///
    /// # Errors
    /// `bits` outside 64..=128.
    pub fn new(bits: u32) -> Result<Self, SecAggError> {
        if !(64..=128).contains(&bits) {
            return Err(SecAggError::Params(ParamsError::RingBits { bits }));
        }
        Ok(Self { bits })
    }

    /// The smallest ring whose sums cannot wrap when the weights sum to at most `weight`.
    pub fn for_weight(weight: u64) -> Self {
        Self {
            bits: Self::bits_needed(weight),
        }
    }

    /// 64 + ⌈log₂(weight + 1)⌉: the bits no sum of terms of total weight `weight` outgrows.
    pub fn bits_needed(weight: u64) -> u32 {
        64 + (u64::BITS - weight.leading_zeros())
    }

    /// Refuse a ring in which sums of total weight `weight` could wrap.
    ///
    /// # Errors
    /// The ring is narrower than [`Ring::bits_needed`], naming the bound.
    pub fn check(&self, weight: u64) -> Result<(), SecAggError> {
        let need = Self::bits_needed(weight);
        if self.bits < need {
            return Err(SecAggError::Params(ParamsError::RingWraps {
                bits: self.bits,
                weight,
                need,
            }));
        }
        Ok(())
    }

    /// b.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bytes one element takes on the wire: ⌈b / 8⌉.
    pub fn element_bytes(&self) -> usize {
        self.bits.div_ceil(8) as usize
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
    /// A value FedAvg would reject (not finite, or |x| ≥ 2²³).
    pub fn encode(
        &self,
        client: ClientId,
        values: &[f32],
        weight: u64,
    ) -> Result<Vec<u128>, SecAggError> {
        let mut out = Vec::with_capacity(values.len() + 1);
        encode_each(client, values, weight, |term| {
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

/// Hand FedAvg's terms of client `client`'s update `values` (weight `weight`) to `push`, then
/// the weight: the encoding [`Ring::encode`] and [`super::lanes::Lanes::encode`] store.
///
/// # Errors
/// A value FedAvg would reject (not finite, or |x| ≥ 2²³); the terms before it were pushed.
pub(crate) fn encode_each(
    client: ClientId,
    values: &[f32],
    weight: u64,
    mut push: impl FnMut(i128),
) -> Result<(), SecAggError> {
    for (i, &x) in values.iter().enumerate() {
        push(fixed_term(i, x, weight).map_err(|source| SecAggError::Encode { client, source })?);
    }
    push(i128::from(weight));
    Ok(())
}
