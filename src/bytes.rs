//! `Vec<f32>` as little-endian bytes in serde formats (`#[serde(with = "crate::bytes::f32s")]`):
//! a binary format stores one byte string, four bytes a value, instead of a tagged number
//! each — exact, and fast for adapters of millions of values.

/// Serialise and deserialise `Vec<f32>` as a byte string.
pub mod f32s {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write `v` as its little-endian bytes.
    ///
    /// # Errors
    /// As the serializer's.
    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    /// Read little-endian bytes back.
    ///
    /// # Errors
    /// A length that is not a multiple of four, or the deserializer's.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?.into_vec();
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::invalid_length(
                bytes.len(),
                &"a multiple of 4 bytes (f32 values)",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
