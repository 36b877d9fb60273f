//! Ring elements as plaintext coefficients. An element of Z/2ᵇ is cut into L limbs of β bits
//! (little end first); β is chosen so that N clients' limbs, each below 2^β, sum below the
//! plaintext modulus t > 2^P: N·(2^β − 1) < 2^P, i.e. β = P − ⌈log₂ N⌉. The sum of the
//! coefficients therefore never wraps mod t, and Σⱼ 2^(βj)·(limb sum j), reduced mod 2ᵇ, is the
//! ring sum of the elements — the exact sums SecAgg+ unmasks.

use super::HeError;
use crate::secagg::Ring;

/// Limbs smaller than this are refused (they would take more ciphertexts than they save).
const MIN_LIMB_BITS: u32 = 8;

/// How ring elements are cut into coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    ring: Ring,
    limb_bits: u32,
    limbs: u32,
}

/// ⌈log₂ n⌉ (0 for n ≤ 1).
fn ceil_log2(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

impl Packing {
    /// The packing for `ring` under a plaintext modulus above 2^`plaintext_bits`, with at most
    /// `max_clients` vectors summed.
    ///
    /// # Errors
    /// So many clients that a limb would have fewer than 8 bits.
    pub fn new(ring: Ring, plaintext_bits: u32, max_clients: usize) -> Result<Self, HeError> {
        let max_clients = max_clients.max(1);
        let limb_bits = plaintext_bits.saturating_sub(ceil_log2(max_clients));
        if limb_bits < MIN_LIMB_BITS {
            return Err(HeError::TooManyClients {
                clients: max_clients,
                limb_bits,
                plaintext_bits,
                max: 1 << (plaintext_bits - MIN_LIMB_BITS),
            });
        }
        Ok(Self {
            ring,
            limb_bits,
            limbs: ring.bits().div_ceil(limb_bits),
        })
    }

    /// Bits a limb carries (β).
    pub fn limb_bits(&self) -> u32 {
        self.limb_bits
    }

    /// Limbs an element takes (L).
    pub fn limbs(&self) -> u32 {
        self.limbs
    }

    /// Coefficients `elements` ring elements take.
    pub fn coefficients(&self, elements: usize) -> usize {
        elements * self.limbs as usize
    }

    /// Elements as coefficients, element by element, limbs little end first.
    pub fn pack(&self, elements: &[u128]) -> Vec<u64> {
        let mask = (1u128 << self.limb_bits) - 1;
        let mut out = Vec::with_capacity(self.coefficients(elements.len()));
        for &x in elements {
            for j in 0..self.limbs {
                out.push(((x >> (self.limb_bits * j)) & mask) as u64);
            }
        }
        out
    }

    /// The ring sums of `survivors` packed vectors from their coefficients' sums (trailing
    /// padding allowed and checked to be 0).
    ///
    /// # Errors
    /// A coefficient above what `survivors` limbs can sum to (`he_decrypt`).
    pub fn unpack(
        &self,
        sums: &[u64],
        elements: usize,
        survivors: usize,
    ) -> Result<Vec<u128>, HeError> {
        let bound = survivors as u64 * ((1u64 << self.limb_bits) - 1);
        let used = self.coefficients(elements);
        if let Some((index, &value)) =
            (sums.iter().enumerate()).find(|&(i, &v)| v > if i < used { bound } else { 0 })
        {
            return Err(HeError::Decrypt {
                index,
                value,
                bound: if index < used { bound } else { 0 },
                survivors,
            });
        }
        Ok(sums[..used.min(sums.len())]
            .chunks_exact(self.limbs as usize)
            .map(|limbs| {
                let sum = (limbs.iter().enumerate()).fold(0u128, |acc, (j, &c)| {
                    acc.wrapping_add((c as u128) << (self.limb_bits * j as u32))
                });
                self.ring.reduce(sum)
            })
            .collect())
    }
}
