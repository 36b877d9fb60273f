//! The split cut's codecs (`split/codec.rs`): each decodes within its stated bound and to its
//! predicted size; a truncated or forged message is an error.

use fedsim::split::codec::{CodecError, CutCompression, Encoded};

fn matrix(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0 + if i % 61 == 0 { 40.0 } else { 0.0 })
        .collect()
}

#[test]
fn every_codec_decodes_to_its_bound_and_its_predicted_size() {
    let (rows, cols) = (13, 96);
    let x = matrix(rows, cols);
    for c in [
        CutCompression::None,
        CutCompression::Fp16,
        CutCompression::Int8,
        CutCompression::TopK { fraction: 0.1 },
    ] {
        let e = c.encode(&x, rows, cols);
        assert_eq!(e.len(), c.encoded_len(rows, cols), "{c:?}");
        let (r, k, y) = e.decode().unwrap();
        assert_eq!((r, k), (rows, cols));
        for (xr, yr) in x.chunks(cols).zip(y.chunks(cols)) {
            let max = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xr.iter().zip(yr) {
                match c {
                    CutCompression::None => assert_eq!(a, b),
                    CutCompression::Fp16 => assert!((a - b).abs() <= a.abs() * 4.9e-4),
                    CutCompression::Int8 => assert!((a - b).abs() <= max / 254.0 * 1.0001),
                    CutCompression::TopK { .. } => assert!(*b == 0.0 || a == b),
                }
            }
            if let CutCompression::TopK { .. } = c {
                let kept: Vec<f32> = yr.iter().filter(|v| **v != 0.0).map(|v| v.abs()).collect();
                let least = kept.iter().fold(f32::MAX, |m, v| m.min(*v));
                assert_eq!(kept.len(), 10);
                let dropped = xr.iter().zip(yr).filter(|(_, b)| **b == 0.0);
                assert!(dropped.into_iter().all(|(a, _)| a.abs() <= least));
            }
        }
    }
}

#[test]
fn a_truncated_or_forged_message_is_an_error() {
    let e = CutCompression::Int8.encode(&matrix(2, 8), 2, 8);
    let cut = Encoded {
        bytes: e.bytes[..e.bytes.len() - 1].to_vec(),
    };
    assert!(matches!(cut.decode(), Err(CodecError::Length { .. })));
    let mut forged = CutCompression::TopK { fraction: 0.5 }.encode(&matrix(1, 8), 1, 8);
    forged.bytes[9] = 200; // the first column index, after the 9-byte header
    assert!(matches!(
        forged.decode(),
        Err(CodecError::Column {
            column: 200,
            cols: 8
        })
    ));
    let mut tag = e.clone();
    tag.bytes[0] = 9;
    assert_eq!(tag.decode(), Err(CodecError::Codec(9)));
}
