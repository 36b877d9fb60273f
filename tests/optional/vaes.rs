//! The SecAgg+ masks drawn with VAES (AVX-512) equal the `aes` crate's stream, block for block.

use fedsim::secagg::mask::MaskStream;

/// Every length from 1 to 70 blocks (the 32-block loop, its 4-block tail and a partial
/// tail) and a part's 640, at offsets inside and across parts, and past 2⁶⁴ − 1 blocks
/// where the counters' low word would wrap: the stream equals the `aes` crate's.
pub fn the_vaes_mask_stream_is_the_aes_crates() {
    for seed in [[0u8; 32], [3u8; 32], std::array::from_fn(|i| i as u8 * 37)] {
        let (fast, reference) = (MaskStream::new(&seed), MaskStream::portable(&seed));
        assert!(fast.is_vaes(), "the CPU has VAES, the stream should use it");
        let lengths = (1..=70).chain([640, 1000]);
        for (blocks, first) in lengths.flat_map(|n| [0u64, 1, 7, 640, 1 << 40].map(|f| (n, f))) {
            let (mut a, mut b) = (vec![0u8; blocks * 16], vec![0u8; blocks * 16]);
            fast.fill(first as usize * 16, &mut a);
            reference.fill(first as usize * 16, &mut b);
            assert_eq!(a, b, "{blocks} blocks from block {first}");
        }
        // Counters crossing 2⁶⁴: the 128-bit counter carries (drawn by the crate).
        let (mut a, mut b) = ([Default::default(); 20], [Default::default(); 20]);
        fast.keystream(u64::MAX - 9, &mut a);
        reference.keystream(u64::MAX - 9, &mut b);
        assert_eq!(a, b);
    }
}
