//! SecAgg+ (src/secagg): the unmasked mean is FedAvg's bit for bit, with and without
//! dropouts; too few survivors fail with `secagg_threshold`; a masked upload says nothing
//! about its update; t − 1 shares reconstruct nothing; an honest client never reveals both
//! secrets of one peer, and rejects tampered or replayed shares.

use std::collections::BTreeSet;

use fedsim::ids::ClientId;
use fedsim::secagg::graph::Graph;
use fedsim::secagg::lanes::{Lanes, PART};
use fedsim::secagg::messages::{MaskedInput, UnmaskRequest};
use fedsim::secagg::server::Unmasked;
use fedsim::secagg::{crypto, Params, Ring, SecAggClient, SecAggError, SecAggServer};
use fedsim::strategy::FedAvgAccumulator;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Who leaves when.
#[derive(Default, Clone)]
pub(crate) struct Drops {
    /// Never send shares (after advertising keys).
    pub(crate) before_shares: BTreeSet<ClientId>,
    /// Send shares, then no masked vector.
    pub(crate) after_shares: BTreeSet<ClientId>,
    /// Send a masked vector, then no unmasking response.
    pub(crate) before_unmask: BTreeSet<ClientId>,
}

/// Updates of `n` clients with `len` values (N(0, 0.01²), a LoRA update's scale) and weights.
pub(crate) fn updates(n: usize, len: usize, seed: u64) -> Vec<(Vec<f32>, u64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.01).unwrap();
    (0..n)
        .map(|_| {
            let v = (0..len).map(|_| normal.sample(&mut rng)).collect();
            (v, rng.random_range(1..200u64))
        })
        .collect()
}

/// One whole round among clients 0..n (each client's entropy from its id).
pub(crate) fn round(
    data: &[(Vec<f32>, u64)],
    params: Params,
    drops: &Drops,
) -> Result<(Unmasked, SecAggServer), SecAggError> {
    let ids: Vec<ClientId> = (0..data.len()).collect();
    let graph = Graph::new(&ids, params.neighbours, 7, 3);
    let mut server = SecAggServer::new(3, params, graph.clone(), data[0].0.len())?;
    let mut clients: Vec<SecAggClient> = ids
        .iter()
        .map(|&c| SecAggClient::new(c, 3, params, graph.of(c), [c as u8 + 1; 32]))
        .collect();
    for c in &clients {
        server.receive_keys(c.advertise())?;
    }
    let mut sharers = Vec::new();
    for c in &ids {
        let dir = server.directory_for(*c);
        let shares = clients[*c].share(dir)?;
        if !drops.before_shares.contains(c) {
            server.receive_shares(shares)?;
            sharers.push(*c);
        }
    }
    let mut maskers = Vec::new();
    for &c in &sharers {
        let inbox = server.inbox_for(c);
        let masked = clients[c].mask(inbox, &data[c].0, data[c].1)?;
        if !drops.after_shares.contains(&c) {
            server.receive_masked(masked)?;
            maskers.push(c);
        }
    }
    let request = server.unmask_request()?;
    for &c in &maskers {
        if !drops.before_unmask.contains(&c) {
            let response = clients[c].unmask(&request)?;
            server.receive_unmask(response)?;
        }
    }
    let out = server.finish()?;
    Ok((out, server))
}

/// Clients 0..n of round `round` through the keys and shares phases (client c's entropy is
/// `[c + salt; 32]`), and the server, ready for their masked vectors.
fn shared(
    n: usize,
    p: Params,
    (round, values, salt): (u64, usize, u8),
) -> (Vec<SecAggClient>, SecAggServer) {
    let ids: Vec<ClientId> = (0..n).collect();
    let graph = Graph::new(&ids, p.neighbours, 7, 3);
    let mut server = SecAggServer::new(round, p, graph.clone(), values).unwrap();
    let mut clients: Vec<SecAggClient> = ids
        .iter()
        .map(|&c| SecAggClient::new(c, round, p, graph.of(c), [c as u8 + salt; 32]))
        .collect();
    for c in &clients {
        server.receive_keys(c.advertise()).unwrap();
    }
    for &c in &ids {
        let dir = server.directory_for(c);
        server
            .receive_shares(clients[c].share(dir).unwrap())
            .unwrap();
    }
    (clients, server)
}

/// FedAvg's mean of `data`'s clients in `keep`.
pub(crate) fn fedavg(data: &[(Vec<f32>, u64)], keep: &[ClientId]) -> Vec<f32> {
    let mut acc = FedAvgAccumulator::new(data[0].0.len());
    for &c in keep {
        acc.fold(&data[c].0, data[c].1).unwrap();
    }
    acc.mean().unwrap()
}

fn params(neighbours: usize, threshold: usize, bits: u32) -> Params {
    Params {
        neighbours,
        threshold,
        ring: Ring::new(bits).unwrap(),
        compute: Default::default(),
    }
}

#[test]
fn the_unmasked_mean_is_fedavgs_bit_for_bit_with_and_without_dropouts() {
    let data = updates(12, 3000, 1);
    let weight: u64 = data.iter().map(|d| d.1).sum();
    let ring = Ring::for_weight(weight);
    for (k, t) in [(11, 6), (4, 3), (6, 3)] {
        let p = params(k, t, ring.bits());
        let (out, _) = round(&data, p, &Drops::default()).unwrap();
        let all: Vec<ClientId> = (0..12).collect();
        assert_eq!(out.survivors, all);
        assert_eq!(
            out.sum.decode_mean(ring).unwrap(),
            fedavg(&data, &all),
            "k {k} t {t}"
        );
    }
    // Two drop before masking, one after sending its masked vector (its update counts), one
    // never shares: the mean is FedAvg's over those whose masked vector arrived.
    let drops = Drops {
        before_shares: [5].into(),
        after_shares: [2, 9].into(),
        before_unmask: [11].into(),
    };
    let (out, _) = round(&data, params(6, 3, ring.bits()), &drops).unwrap();
    let kept: Vec<ClientId> = vec![0, 1, 3, 4, 6, 7, 8, 10, 11];
    assert_eq!(out.survivors, kept);
    assert_eq!(out.dropped, vec![2, 9]);
    assert_eq!(out.sum.decode_mean(ring).unwrap(), fedavg(&data, &kept));
}

#[test]
fn too_few_survivors_fail_the_round_with_secagg_threshold() {
    let data = updates(6, 100, 2);
    let drops = Drops {
        after_shares: [0, 1, 2, 3].into(),
        ..Default::default()
    };
    let err = round(&data, params(5, 3, 96), &drops).unwrap_err();
    assert!(matches!(err, SecAggError::Threshold { .. }), "{err}");
    assert!(err.to_string().starts_with("secagg_threshold"), "{err}");
}

#[test]
fn a_ring_that_could_wrap_is_refused_with_the_bound() {
    assert_eq!(Ring::new(100).unwrap().bits_needed(1000), 74);
    let err = Ring::new(70).unwrap().check(1000).unwrap_err().to_string();
    assert!(err.contains("74") && err.contains("ring_bits"), "{err}");
    assert!(Ring::new(0).is_err() && Ring::new(129).is_err());
    // At the bound, the largest terms FedAvg accepts sum without wrapping.
    let ring = Ring::for_weight(6);
    let big = (1u32 << 23) as f32 - 1.0;
    let a = ring.encode(0, &[big, -big], 3).unwrap();
    let b = ring.encode(1, &[big, -big], 3).unwrap();
    let sum: Vec<u128> = a.iter().zip(&b).map(|(x, y)| ring.add(*x, *y)).collect();
    assert_eq!(ring.decode_mean(&sum).unwrap(), vec![big, -big]);
    assert!(ring.encode(0, &[f32::NAN], 1).is_err());
    // `sim validate` refuses a given ring its data could wrap, naming the field and the bound
    // (SMALL trains on 204 examples: 64 + 8 bits).
    let s = small(&[
        "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: Some(70))",
    ]);
    let err = s.check_data().unwrap_err().to_string();
    assert!(
        err.contains("SecAggPlus.ring_bits") && err.contains("ring_bits ≥ 72"),
        "{err}"
    );
    let s = small(&[
        "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: Some(72))",
    ]);
    s.check_data().unwrap();
    // A masked vector with an element beyond the ring is found as it is added (and taken
    // back out by negating it); the wrong length is refused on arrival (see below).
    let ring = Ring::new(70).unwrap();
    let mut sum = Lanes::from_elements(ring, &[5, 5, 5]);
    let mut bytes = Lanes::from_elements(ring, &[1, 2, 3]).to_bytes(ring);
    // 9 bytes an element: the three low words, then the three high bytes.
    bytes[26] = 0x40; // bit 70 of the third element
    assert_eq!(sum.add_uploads(ring, &[&bytes], false), [false]);
    assert!(Lanes::from_bytes(ring, &bytes).is_none());
    sum.add_uploads(ring, &[&bytes], true);
    assert_eq!(sum.elements(ring), vec![5; 3]);
    bytes[26] = 0x20; // bit 69: in the ring
    assert_eq!(
        sum.add_uploads(ring, &[&bytes, &bytes], false),
        [true, true]
    );
    // 5 + 2·(3 + 2⁶⁹) = 11 + 2⁷⁰ ≡ 11.
    assert_eq!(sum.elements(ring), vec![7, 9, 11]);
    assert_eq!(
        Lanes::from_bytes(ring, &bytes).unwrap().elements(ring),
        [1, 2, 3 + (1 << 69)]
    );
}

#[test]
fn a_masked_upload_is_independent_of_its_update() {
    let len = 100_000;
    let ring = Ring::new(80).unwrap();
    // One client's masked vector, from an update with a strong structure (a ramp).
    let mut data = updates(4, len, 3);
    data[0].0 = (0..len).map(|i| (i as f32 / len as f32) - 0.5).collect();
    let p = params(3, 2, ring.bits());
    let (mut clients, mut server) = shared(4, p, (3, len, 9));
    let inbox = server.inbox_for(0);
    let MaskedInput { masked, .. } = clients[0].mask(inbox, &data[0].0, data[0].1).unwrap();
    let y = Lanes::from_bytes(ring, &masked).unwrap().elements(ring);
    // Correlation of the masked elements (as fractions of the ring) with the update.
    let m: Vec<f64> = y[..len].iter().map(|&e| e as f64 / 2f64.powi(80)).collect();
    let x: Vec<f64> = data[0].0.iter().map(|&v| v as f64).collect();
    let r = correlation(&m, &x);
    assert!(r.abs() < 0.02, "correlation {r}");
    // Its bytes are uniform: a chi-square test over the 256 byte values (255 degrees of
    // freedom; 340 is beyond the 0.9999 quantile).
    let mut counts = [0f64; 256];
    for &b in &masked {
        counts[b as usize] += 1.0;
    }
    let expected = masked.len() as f64 / 256.0;
    let chi2: f64 = counts
        .iter()
        .map(|c| (c - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 340.0, "chi-square {chi2}");
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn t_shares_reconstruct_the_secret_and_t_minus_one_reconstruct_nothing() {
    let secret = [42u8; 32];
    let shares = crypto::split(&secret, 4, 7, [9; 32]);
    assert_eq!(crypto::combine(&shares[..4]), Some(secret));
    assert_eq!(crypto::combine(&shares[3..7]), Some(secret));
    // With 3 shares, every candidate secret byte is equally consistent: the "secret" they
    // give is not it, and over many sharings its bytes are uniform.
    let mut agree = 0;
    for s in 0..200u8 {
        let shares = crypto::split(&secret, 4, 7, [s; 32]);
        if let Some(wrong) = crypto::combine(&shares[..3]) {
            agree += wrong.iter().filter(|&&b| b == 42).count();
        }
    }
    // 200 × 32 bytes, each 42 with probability 1/256: about 25.
    assert!(agree < 60, "{agree} bytes of 6400 matched the secret");
}

/// Clients 0..5 through the masking phase, for the tests that probe one client.
fn masked_round(p: Params) -> (Vec<SecAggClient>, SecAggServer) {
    let data = updates(5, 50, 4);
    let (mut clients, mut server) = shared(5, p, (3, 50, 1));
    for c in 0..5 {
        let inbox = server.inbox_for(c);
        let m = clients[c].mask(inbox, &data[c].0, data[c].1).unwrap();
        server.receive_masked(m).unwrap();
    }
    (clients, server)
}

#[test]
fn an_honest_client_never_reveals_both_secrets_of_a_peer_nor_answers_twice() {
    let (mut clients, _) = masked_round(params(4, 2, 96));
    let both = UnmaskRequest {
        survivors: vec![0, 1, 2, 3],
        dropped: vec![3, 4],
    };
    let err = clients[0].unmask(&both).unwrap_err();
    assert!(matches!(err, SecAggError::Refused { .. }), "{err}");
    let fine = UnmaskRequest {
        survivors: vec![0, 1, 2, 3],
        dropped: vec![4],
    };
    let response = clients[1].unmask(&fine).unwrap();
    assert!(response.key_shares.iter().all(|(c, _)| *c == 4));
    assert!(response.seed_shares.iter().all(|(c, _)| *c != 4));
    // A second request (with the lists swapped) would reveal the other secret: refused.
    let swapped = UnmaskRequest {
        survivors: vec![0, 1, 2, 4],
        dropped: vec![3],
    };
    assert!(matches!(
        clients[1].unmask(&swapped).unwrap_err(),
        SecAggError::Phase { .. }
    ));
}

#[test]
fn tampered_or_replayed_shares_are_rejected() {
    let p = params(4, 2, 96);
    let data = updates(5, 20, 5);
    // Round 3 and round 4 of the same clients: a share from round 3 replayed in round 4.
    let mut old_round = Vec::new();
    for round in [3u64, 4] {
        let (mut clients, mut server) = shared(5, p, (round, 20, 1));
        let mut inbox = server.inbox_for(0);
        if round == 3 {
            old_round = inbox.shares.clone();
            // Tampered: one flipped bit.
            inbox.shares[0].ciphertext[5] ^= 1;
            let err = clients[0].mask(inbox, &data[0].0, data[0].1).unwrap_err();
            assert!(err.to_string().contains("authentication"), "{err}");
        } else {
            inbox.shares[0] = old_round[0].clone();
            let err = clients[0].mask(inbox, &data[0].0, data[0].1).unwrap_err();
            assert!(err.to_string().contains("authentication"), "{err}");
            // A share addressed to another client.
            let mut other = server.inbox_for(1);
            let stolen = server.inbox_for(2).shares[0].clone();
            other.shares.push(stolen);
            let err = clients[1].mask(other, &data[1].0, data[1].1).unwrap_err();
            assert!(matches!(err, SecAggError::Rejected { .. }), "{err}");
        }
    }
}

#[test]
fn the_graph_is_k_regular_symmetric_and_complete_when_k_covers_everyone() {
    let ids: Vec<ClientId> = (0..30).map(|i| i * 3).collect();
    let g = Graph::new(&ids, 6, 1, 2);
    for &c in &ids {
        assert_eq!(g.of(c).len(), 6, "client {c}");
        for &n in g.of(c) {
            assert!(g.joined(n, c));
        }
    }
    assert_ne!(
        g,
        Graph::new(&ids, 6, 1, 3),
        "each round draws its own graph"
    );
    let full = Graph::new(&ids[..5], 10, 1, 2);
    assert!(ids[..5].iter().all(|&c| full.of(c).len() == 4));
    assert!(params(6, 1, 96).check(30).is_err());
    assert!(params(6, 7, 96).check(30).is_err());
}

#[test]
fn a_mask_is_one_stream_whatever_the_parts_and_threads() {
    use fedsim::secagg::mask::{apply_mask, apply_masks, MaskStream};
    // 10,001 elements: parts of PART, the last shorter and ending mid-block; narrow rings of
    // 1, 5, 7 and 8 bytes an element (no high words), wide ones whose high words are 2, 3
    // and 8 bytes.
    let len = 10_001;
    let seed = [3u8; 32];
    for bits in [3, 40, 55, 64, 74, 90, 128] {
        let ring = Ring::new(bits).unwrap();
        let mut v = Lanes::zeros(ring, len);
        apply_mask(ring, &seed, false, &mut v);
        let mut one = Lanes::zeros(ring, len);
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| apply_mask(ring, &seed, false, &mut one));
        assert_eq!(v, one, "{bits} bits");
        // The elements the layout describes, read from RustCrypto's CTR mode over AES-256
        // from a zero IV: per part, the low words, then the high words.
        use ctr::cipher::{KeyIvInit, StreamCipher};
        let mut prg = ctr::Ctr128BE::<aes::Aes256>::new(&seed.into(), &[0u8; 16].into());
        let w = ring.element_bytes();
        let mut bytes = vec![0u8; len * w];
        prg.apply_keystream(&mut bytes);
        let got = v.elements(ring);
        for (p, part) in bytes.chunks(PART * w).enumerate() {
            let n = part.len() / w;
            let lb = w.min(8);
            let (lows, highs) = part.split_at(lb * n);
            for j in 0..n {
                let mut le = [0u8; 16];
                le[..lb].copy_from_slice(&lows[lb * j..lb * (j + 1)]);
                le[8..w.max(8)].copy_from_slice(&highs[(w - lb) * j..(w - lb) * (j + 1)]);
                let want = ring.reduce(u128::from_le_bytes(le));
                assert_eq!(
                    got[p * PART + j],
                    want,
                    "{bits} bits, element {j} of part {p}"
                );
            }
        }
        // Its wire bytes (every low word, then every high word) read back the same.
        let wire = v.to_bytes(ring);
        assert_eq!(Lanes::from_bytes(ring, &wire).unwrap().elements(ring), got);
        // Subtracting it gives zeros back; masks applied together equal masks one by one.
        apply_mask(ring, &seed, true, &mut v);
        assert!(v.elements(ring).iter().all(|&x| x == 0));
        let (a, b) = ([5u8; 32], [6u8; 32]);
        let together = [(MaskStream::new(&a), false), (MaskStream::new(&b), true)];
        apply_masks(ring, &together, &mut v);
        apply_mask(ring, &a, false, &mut one);
        apply_mask(ring, &b, true, &mut one);
        apply_mask(ring, &seed, true, &mut one);
        assert_eq!(v.elements(ring), one.elements(ring), "{bits} bits");
    }
}

#[test]
fn lanes_encode_as_the_ring_does_and_travel_intact() {
    let ring = Ring::new(78).unwrap();
    let data = updates(1, 3_000, 8);
    let (values, weight) = (&data[0].0, data[0].1);
    let lanes = Lanes::encode(ring, 0, values, weight).unwrap();
    let elements = ring.encode(0, values, weight).unwrap();
    assert_eq!(lanes.elements(ring), elements);
    let back = Lanes::from_bytes(ring, &lanes.to_bytes(ring)).unwrap();
    assert_eq!(back.elements(ring), elements);
    // Negative terms (the high lane all ones) read back as FedAvg's exact sums.
    let (sums, w) = back.decode_sums(ring);
    assert_eq!((sums, w), ring.decode_sums(&elements));
    assert!(Lanes::encode(ring, 0, &[f32::NAN], 1).is_err());
}

#[test]
fn the_mask_stream_is_openssl_aes_256_ctr() {
    // `head -c 48 /dev/zero | openssl enc -aes-256-ctr -K 0303…03 -iv 00…00 | xxd -p`
    // (OpenSSL 3.0.19): the generator Google's SecAgg uses, EVP_aes_256_ctr from a zero IV.
    let openssl = "91c08762876dccf9ba204a33768fa5fe2bbfb57d366375a8c02ebb604d6c\
                   074a612486dea963a39d967b8ffca87c4135";
    // The stream as drawn on this CPU (VAES where it has it) and by the `aes` crate alone.
    use fedsim::secagg::mask::MaskStream;
    for stream in [
        MaskStream::new(&[3u8; 32]),
        MaskStream::portable(&[3u8; 32]),
    ] {
        let mut out = [0u8; 48];
        stream.fill(0, &mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, openssl.replace(' ', ""), "{stream:?}");
        // From an offset, and with a tail shorter than a block.
        let mut part = [0u8; 21];
        stream.fill(16, &mut part);
        assert_eq!(part[..], out[16..37]);
    }
}

#[test]
fn a_masked_vector_outside_the_ring_is_left_out_as_dropped() {
    // 94 bits in 12 bytes: the top 2 bits of an element's last byte lie outside the ring.
    // Ten clients: client 2's vector is summed in the first batch of 8, client 9's when the
    // server asks for unmasking.
    let p = params(4, 2, 94);
    let data = updates(10, 50, 5);
    let (mut clients, mut server) = shared(10, p, (3, 50, 1));
    for c in 0..10 {
        let inbox = server.inbox_for(c);
        let mut m = clients[c].mask(inbox, &data[c].0, data[c].1).unwrap();
        if c == 2 || c == 9 {
            let last = m.masked.len() - 1;
            m.masked[last] |= 0x80;
        }
        if c == 5 {
            // A short vector is refused on arrival; the client may still send its own.
            let short = MaskedInput {
                client: 5,
                masked: m.masked[..12 * 50].to_vec(),
            };
            let err = server.receive_masked(short).unwrap_err().to_string();
            assert!(err.contains("wrong size"), "{err}");
        }
        server.receive_masked(m).unwrap();
    }
    let request = server.unmask_request().unwrap();
    assert_eq!(request.dropped, vec![2, 9]);
    for c in request.survivors.clone() {
        let response = clients[c].unmask(&request).unwrap();
        server.receive_unmask(response).unwrap();
    }
    let out = server.finish().unwrap();
    let keep = [0, 1, 3, 4, 5, 6, 7, 8];
    assert_eq!(out.survivors, keep);
    assert_eq!(out.sum.decode_mean(p.ring).unwrap(), fedavg(&data, &keep));
}

/// SMALL over 4 clients, all sampled, with `set`.
pub(crate) fn small(set: &[&str]) -> fedsim::Scenario {
    let mut all = vec![
        "strategy.fraction_fit=1.0",
        "strategy.min_fit_clients=4",
        "rounds=3",
    ];
    all.extend_from_slice(set);
    crate::util::scenario(crate::util::SMALL, &all).unwrap()
}

pub(crate) const SECURE: &str =
    "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: None)";

#[test]
fn a_secure_run_gives_the_plain_runs_adapter_bit_for_bit_even_with_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    for (name, extra) in [
        ("clean", None),
        ("crashes", Some("system.crash_probability=0.3")),
    ] {
        let set: Vec<&str> = extra.into_iter().collect();
        let plain = crate::util::run(&small(&set), &tmp.path().join(format!("{name}-plain")));
        let mut secure_set = set.clone();
        secure_set.push(SECURE);
        let secure = crate::util::run(
            &small(&secure_set),
            &tmp.path().join(format!("{name}-secure")),
        );
        let skipped = crate::util::round_metrics(&secure.dir)
            .iter()
            .filter_map(|r| r["skipped"].as_str().map(String::from))
            .collect::<Vec<_>>();
        assert!(skipped.is_empty(), "{name}: {skipped:?}");
        assert!(
            adapter(&secure.dir) == adapter(&plain.dir),
            "{name}: adapters differ"
        );
        let (p, s) = (
            crate::util::round_metrics(&plain.dir),
            crate::util::round_metrics(&secure.dir),
        );
        for (a, b) in p.iter().zip(&s) {
            assert_eq!(a["completed"], b["completed"], "{name}");
            assert_eq!(a["crashed"], b["crashed"], "{name}");
            assert_eq!(a["eval_loss"], b["eval_loss"], "{name}");
            // The masked vector is ⌈b/8⌉ bytes a value, more than the f32 upload.
            if a["completed"].as_u64() > Some(0) {
                assert!(b["bytes_up"].as_u64() > a["bytes_up"].as_u64(), "{a} {b}");
            }
        }
        if name == "crashes" {
            assert!(
                p.iter().any(|r| r["crashed"].as_u64() > Some(0)),
                "no crash to mask"
            );
        }
    }
}

#[test]
fn a_secure_round_with_too_few_survivors_is_recorded_with_secagg_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let s = small(&[
        "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 3, ring_bits: None)",
        "system.crash_probability=0.6",
        "rounds=4",
    ]);
    let report = crate::util::run(&s, &tmp.path().join("run"));
    let rounds = crate::util::round_metrics(&report.dir);
    let failed: Vec<&serde_json::Value> = rounds
        .iter()
        .filter(|r| {
            r["skipped"]
                .as_str()
                .is_some_and(|w| w.starts_with("secagg_threshold"))
        })
        .collect();
    assert!(!failed.is_empty(), "{rounds:?}");
    assert_eq!(report.summary.rounds_completed, 4, "the run goes on");
}

#[test]
fn secure_aggregation_is_refused_where_the_server_needs_each_update() {
    let refused = |set: &[&str]| {
        let mut all = vec!["strategy.min_fit_clients=4", SECURE];
        all.extend_from_slice(set);
        let err = crate::util::scenario(crate::util::SMALL, &all).unwrap_err();
        fedsim::fmt::chain(&err)
    };
    let e = refused(&["strategy.kind=Median"]);
    assert!(
        e.contains("strategy.secure_aggregation") && e.contains("Median"),
        "{e}"
    );
    // The server cannot clip what it never sees (DP with client-side clipping is fine).
    let e = refused(&[
        crate::util::DP,
        "dp.mechanism=ServerSideFixed(clip_norm: 0.5, noise_multiplier: 1.0)",
    ]);
    assert!(
        e.contains("dp.mechanism") && e.contains("ClientSideFixed"),
        "{e}"
    );
    let bad =
        "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 5, ring_bits: None)";
    let e = fedsim::fmt::chain(&crate::util::scenario(crate::util::SMALL, &[bad]).unwrap_err());
    assert!(e.contains("threshold"), "{e}");
    let e = refused(&["strategy.min_fit_clients=2"]);
    assert!(
        e.contains("min_fit_clients") && e.contains("at least 3"),
        "{e}"
    );
    // A ring too narrow for the data: refused when the run starts, with the bound.
    let tmp = tempfile::tempdir().unwrap();
    let narrow =
        "strategy.secure_aggregation=SecAggPlus(neighbours: 2, threshold: 2, ring_bits: Some(66))";
    let s =
        crate::util::scenario(crate::util::SMALL, &["strategy.min_fit_clients=4", narrow]).unwrap();
    let err = crate::util::run_full(
        &s,
        &tmp.path().join("run"),
        fedsim::Shutdown::never(),
        None,
        None,
    )
    .unwrap_err();
    let e = fedsim::fmt::chain(&err);
    assert!(e.contains("ring_bits") && e.contains("can wrap"), "{e}");
}
