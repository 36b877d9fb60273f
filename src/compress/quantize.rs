//! Half precision and symmetric block quantisation with power-of-two scales.
//!
//! A block of [`BLOCK`] values shares one exponent e: the values are sent as integers q with
//! |q| ≤ 2ᵇ⁻¹ − 1 and decode to q · 2ᵉ, exactly representable in `f32`. e is the smallest
//! exponent (at least −40, the fold's grid) at which the block's largest magnitude fits, so
//! the rounding error per value is at most 2ᵉ⁻¹ (to nearest) or below 2ᵉ (stochastic), and
//! 2ᵉ < 2 · max|x| / (2ᵇ⁻¹ − 1). A block holding a value that is not finite is sent with the
//! exponent [`NON_FINITE`] and decodes to NaN, so the aggregator refuses it as it refuses an
//! uncompressed update that diverged.

use half::f16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Values per block.
pub const BLOCK: usize = 32;
/// The smallest exponent: the exact fold's grid is 2⁻⁴⁰.
const MIN_EXP: i32 = -40;
/// The exponent that marks a block with a value that is not finite.
pub(super) const NON_FINITE: i8 = i8::MIN;

/// Largest integer magnitude at `bits`.
pub(super) fn qmax(bits: u8) -> i32 {
    (1 << (bits - 1)) - 1
}

/// The block's exponent: smallest e ≥ −40 with max|x| ≤ qmax · 2ᵉ.
fn exponent(block: &[f32], qmax: i32) -> i8 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    if !block.iter().all(|v| v.is_finite()) {
        return NON_FINITE;
    }
    let need = f64::from(max) / f64::from(qmax);
    let mut e = if need > 0.0 {
        need.log2().ceil() as i32
    } else {
        MIN_EXP
    };
    while e > MIN_EXP && pow2(e - 1) * f64::from(qmax) >= f64::from(max) {
        e -= 1;
    }
    while pow2(e) * f64::from(qmax) < f64::from(max) {
        e += 1;
    }
    e.max(MIN_EXP) as i8
}

fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Quantise one block to `bits`: its exponent, and its integers into `q`. With `rng`, each
/// value rounds up with probability equal to its fractional part (unbiased).
pub fn quantize_block(block: &[f32], bits: u8, rng: Option<&mut ChaCha8Rng>, q: &mut [i8]) -> i8 {
    let qm = qmax(bits);
    let e = exponent(block, qm);
    if e == NON_FINITE {
        q.iter_mut().for_each(|v| *v = 0);
        return e;
    }
    let inv = pow2(-i32::from(e));
    match rng {
        Some(rng) => {
            for (x, out) in block.iter().zip(q.iter_mut()) {
                let y = f64::from(*x) * inv;
                let u: f64 = rng.random();
                *out = ((y + u).floor() as i32).clamp(-qm, qm) as i8;
            }
        }
        None => {
            for (x, out) in block.iter().zip(q.iter_mut()) {
                let y = f64::from(*x) * inv;
                *out = (y.round() as i32).clamp(-qm, qm) as i8;
            }
        }
    }
    e
}

/// Decode one block: q · 2ᵉ (NaN for a non-finite block).
pub fn dequantize_block(q: &[i8], e: i8, out: &mut [f32]) {
    if e == NON_FINITE {
        out.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    let s = pow2(i32::from(e));
    for (v, &qi) in out.iter_mut().zip(q) {
        *v = (f64::from(qi) * s) as f32;
    }
}

/// Half precision, rounded to nearest even; magnitudes beyond 65504 saturate (an update that
/// large has diverged, and stays refused only if it is not finite).
pub fn to_f16(x: f32) -> u16 {
    if x.is_finite() {
        f16::from_f32(x.clamp(-65504.0, 65504.0)).to_bits()
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// Back from half precision (exact).
pub fn from_f16(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Pack 4-bit integers (two's complement nibbles, low nibble first).
pub(super) fn pack_nibbles(q: &[i8]) -> Vec<u8> {
    q.chunks(2)
        .map(|p| {
            let lo = (p[0] as u8) & 0x0f;
            let hi = p.get(1).map_or(0, |&h| (h as u8) & 0x0f);
            lo | (hi << 4)
        })
        .collect()
}

/// Unpack `n` 4-bit integers.
pub(super) fn unpack_nibbles(bytes: &[u8], n: usize, out: &mut Vec<i8>) {
    out.clear();
    for &b in bytes {
        for nib in [b & 0x0f, b >> 4] {
            if out.len() < n {
                // Sign-extend the nibble.
                out.push(((nib << 4) as i8) >> 4);
            }
        }
    }
}
