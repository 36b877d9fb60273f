//! A narrow ring's words (b ≤ 64: w = ⌈b/8⌉ bytes each, little-endian) added to one lane,
//! mod 2⁶⁴ — no carries, as 2ᵇ divides 2⁶⁴. Where the CPU has AVX-512 VBMI, eight w-byte
//! words are spread into eight 64-bit lanes with one byte permutation (`vpermb`) and added
//! in one instruction; elsewhere a word is one unaligned 8-byte load, masked.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Add (`negate` false) or subtract the `w`-byte words `l` to `lo` (one word an element,
/// 1 ≤ w ≤ 8). Returns the OR of the words (for a range check).
pub fn add(w: usize, negate: bool, lo: &mut [u64], l: &[u8]) -> u64 {
    assert!(
        (1..=8).contains(&w) && l.len() == lo.len() * w,
        "{w}-byte words"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vbmi")
    {
        // SAFETY: the CPU has AVX-512 F, BW and VBMI, checked above.
        return unsafe {
            match negate {
                false => add_vbmi::<false>(w, lo, l),
                true => add_vbmi::<true>(w, lo, l),
            }
        };
    }
    add_portable(w, negate, lo, l)
}

/// [`add`] a word at a time, whatever the CPU (the reference the VBMI loop is tested
/// against).
pub fn add_portable(w: usize, negate: bool, lo: &mut [u64], l: &[u8]) -> u64 {
    assert!(
        (1..=8).contains(&w) && l.len() == lo.len() * w,
        "{w}-byte words"
    );
    match negate {
        false => word_loop::<false>(w, lo, l),
        true => word_loop::<true>(w, lo, l),
    }
}

/// [`add_portable`]'s loop.
fn word_loop<const NEG: bool>(w: usize, lo: &mut [u64], l: &[u8]) -> u64 {
    let mask = u64::MAX >> (64 - 8 * w);
    let mut or = 0;
    for (i, acc) in lo.iter_mut().enumerate() {
        let at = i * w;
        let x = match l.get(at..at + 8) {
            Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")) & mask,
            None => {
                let mut le = [0u8; 8];
                le[..w].copy_from_slice(&l[at..at + w]);
                u64::from_le_bytes(le)
            }
        };
        or |= x;
        *acc = if NEG {
            acc.wrapping_sub(x)
        } else {
            acc.wrapping_add(x)
        };
    }
    or
}

/// [`add`] eight words at a time: a masked load of their 8·w bytes, `vpermb` spreading byte
/// j of word i to byte 8i + j (the bytes above w zeroed), a 64-bit add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn add_vbmi<const NEG: bool>(w: usize, lo: &mut [u64], l: &[u8]) -> u64 {
    let mut index = [0u8; 64];
    let mut keep = 0u64;
    for (i, byte) in index.iter_mut().enumerate() {
        let (word, j) = (i / 8, i % 8);
        if j < w {
            *byte = (word * w + j) as u8;
            keep |= 1 << i;
        }
    }
    // SAFETY: an unaligned 64-byte load of a 64-byte array.
    let index = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
    let load = u64::MAX >> (64 - 8 * w);
    let mut or = _mm512_setzero_si512();
    let (words, rest) = lo.split_at_mut(lo.len() / 8 * 8);
    for (acc, bytes) in words.chunks_exact_mut(8).zip(l.chunks_exact(8 * w)) {
        // SAFETY: the load reads the chunk's 8·w bytes only (the mask keeps the first 8·w);
        // the accumulator's load and store cover its 8 words, 64 bytes, unaligned.
        unsafe {
            let x = _mm512_maskz_loadu_epi8(load, bytes.as_ptr().cast());
            let x = _mm512_maskz_permutexvar_epi8(keep, index, x);
            let a = _mm512_loadu_si512(acc.as_ptr().cast());
            let sum = if NEG {
                _mm512_sub_epi64(a, x)
            } else {
                _mm512_add_epi64(a, x)
            };
            _mm512_storeu_si512(acc.as_mut_ptr().cast(), sum);
            or = _mm512_or_si512(or, x);
        }
    }
    let tail = word_loop::<NEG>(w, rest, &l[words.len() * w..]);
    _mm512_reduce_or_epi64(or) as u64 | tail
}
