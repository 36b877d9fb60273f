//! The SecAgg+ masks drawn with VAES (AVX-512) equal the `aes` crate's stream, block for block.

use fedsim::secagg::mask::{Block, MaskStream};

fn as_blocks(bytes: &mut [u8]) -> &mut [Block] {
    Block::slice_as_chunks_mut(bytes).0
}

/// Every length from 1 to 70 blocks (the 32-block loop, its 4-block tail and a partial
/// tail), a part's 640 and 1,000, from blocks inside and across parts, across 2⁶³ (the
/// counter's sign bit as the loop's 64-bit lanes hold it) and up to 2⁶⁴ (where the loop's
/// low word would wrap and the crate draws instead): the stream equals the `aes` crate's.
pub fn the_vaes_mask_stream_is_the_aes_crates() {
    for seed in [[0u8; 32], [3u8; 32], std::array::from_fn(|i| i as u8 * 37)] {
        let (fast, reference) = (MaskStream::new(&seed), MaskStream::portable(&seed));
        assert!(fast.is_vaes(), "the CPU has VAES, the stream should use it");
        let lengths = (1..=70).chain([640, 1000]);
        let firsts = [0u64, 1, 7, 640, 1 << 40, (1 << 63) - 2, u64::MAX - 1000];
        for (blocks, first) in lengths.flat_map(|n| firsts.map(|f| (n, f))) {
            let (mut a, mut b) = (vec![0u8; blocks * 16], vec![0u8; blocks * 16]);
            fast.keystream(first, as_blocks(&mut a));
            reference.keystream(first, as_blocks(&mut b));
            assert_eq!(a, b, "{blocks} blocks from block {first}");
        }
        // Counters crossing 2⁶⁴: the 128-bit counter carries (drawn by the crate).
        let (mut a, mut b) = ([Default::default(); 20], [Default::default(); 20]);
        fast.keystream(u64::MAX - 9, &mut a);
        reference.keystream(u64::MAX - 9, &mut b);
        assert_eq!(a, b);
    }
}
