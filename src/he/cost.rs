//! What homomorphic aggregation costs on the virtual clock. Priced like SecAgg+'s phases
//! (`secagg::cost`), in the same record:
//! - **keys**: every sampled client downloads the round's public key before training (the
//!   key holders make it among themselves beside the server);
//! - **masked** (here: encrypted): each client encrypts its packed vector — compute on its
//!   timeline — and uploads the ciphertexts in place of its update;
//! - **unmask** (here: decryption): after the round's last upload the server adds that
//!   upload's ciphertexts and the key holders decrypt the sum, in parallel with each other.
//!   Nothing is asked of the clients, so a dropout costs nothing.
//!
//! The key holders sit beside the server: the bytes they exchange with it are recorded
//! (`key_holder_bytes`) but their transfers are not timed. Compute is priced per plaintext
//! coefficient from `cargo bench --bench secagg` (`he_*`): the defaults below, or the
//! scenario's `client_elements_per_s` / `server_elements_per_s` / `decrypt_elements_per_s`.

/// Coefficients a second a client encodes, packs and encrypts (public-key BFV, n = 8192,
/// q ≈ 2¹²⁰): `he_client_upload_460800` on the 2-core reference host, 2026-12-03 — 113
/// ciphertexts (925,696 coefficients) in 336 ms.
pub const CLIENT_COEFFICIENTS_PER_S: f64 = 2.75e6;

/// Coefficients a second the server takes uploads in at (parse a ciphertext, add it):
/// `he_add` on the same host (1.56 ms a ciphertext).
pub const SERVER_COEFFICIENTS_PER_S: f64 = 5.25e6;

/// Coefficients a second the key holders decrypt at, working in parallel (one holder's
/// decryption share, then the shares combined): from `he_decrypt_3_holders` on the same host
/// (5.9 ms a ciphertext for three shares and their combination; about 3 ms with the holders
/// in parallel).
pub const DECRYPT_COEFFICIENTS_PER_S: f64 = 2.7e6;

/// The compute throughputs homomorphic aggregation is priced with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    /// A client's encryption, plaintext coefficients a second.
    pub client_elements_per_s: f64,
    /// The server's parsing and adding of uploaded ciphertexts, coefficients a second.
    pub server_elements_per_s: f64,
    /// The key holders' decryption, coefficients a second.
    pub decrypt_elements_per_s: f64,
}

impl Default for Compute {
    fn default() -> Self {
        Self {
            client_elements_per_s: CLIENT_COEFFICIENTS_PER_S,
            server_elements_per_s: SERVER_COEFFICIENTS_PER_S,
            decrypt_elements_per_s: DECRYPT_COEFFICIENTS_PER_S,
        }
    }
}

/// A client's encryption of `ciphertexts` ciphertexts of degree `degree`, simulated seconds.
pub fn encrypt_seconds(ciphertexts: usize, degree: usize, compute: &Compute) -> f64 {
    (ciphertexts * degree) as f64 / compute.client_elements_per_s
}

/// The server's compute after the round's last upload, simulated seconds: adding that
/// upload's `ciphertexts` (the others were added while later ones were on their way), then
/// the key holders' decryption of the sum.
pub fn decrypt_seconds(ciphertexts: usize, degree: usize, compute: &Compute) -> f64 {
    let coefficients = (ciphertexts * degree) as f64;
    coefficients / compute.server_elements_per_s + coefficients / compute.decrypt_elements_per_s
}

/// A round's decryption as it went, for the clock and the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decryption {
    /// Ciphertexts decrypted (one upload's worth).
    pub ciphertexts: usize,
    /// The scheme's degree.
    pub degree: usize,
    /// Bytes between the server and the key holders: the sums down, their shares up.
    pub holder_bytes: u64,
}

/// What the server needs to price a homomorphic round, from its key set-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// The public key each client downloads.
    pub public_key_bytes: u64,
    /// One ciphertext.
    pub ciphertext_bytes: u64,
    /// Ciphertexts one client uploads.
    pub ciphertexts: usize,
    /// The key holders' public-key shares.
    pub holder_bytes: u64,
}
