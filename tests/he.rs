//! Homomorphic aggregation: the packing's limbs never wrap and put the ring sums back
//! together; encrypted sums decrypt exactly with one or several key holders; the server
//! refuses uploads that do not belong; a run releases the plain run's adapter bit for bit
//! (with crashes, and under DP), prices its phases on the clock, and withholds a round of one
//! upload; what cannot work is refused by name.

use fedsim::he::{EncryptedInput, EncryptedSum, HeError, KeyAuthority, Packing, Params};
use fedsim::secagg::Ring;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use crate::system::{clients_log, f};
use crate::util::{round_metrics, run, scenario, DP, SMALL};

const HE: &str = "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 4096), \
                  key_holders: 3)";

fn params(degree: usize, holders: usize, ring_bits: u32, clients: usize) -> Params {
    let ring = Ring::new(ring_bits).unwrap();
    Params::new(degree, holders, ring, clients, Default::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn limb_sums_put_back_together_are_the_ring_sums(
        bits in 64u32..=128,
        clients in 1usize..=40,
        seed in any::<u64>(),
    ) {
        let ring = Ring::new(bits).unwrap();
        let packing = Packing::new(ring, 46, clients).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let elements = 7;
        let mut coefficient_sums = vec![0u64; packing.coefficients(elements)];
        let mut ring_sums = vec![0u128; elements];
        for _ in 0..clients {
            // Values at the ring's extremes as often as in between.
            let xs: Vec<u128> = (0..elements)
                .map(|i| match i % 3 {
                    0 => ring.reduce(u128::MAX),
                    1 => 0,
                    _ => ring.reduce(rng.random::<u128>()),
                })
                .collect();
            for (s, c) in coefficient_sums.iter_mut().zip(packing.pack(&xs)) {
                prop_assert!(c < 1 << packing.limb_bits());
                *s += c;
            }
            for (s, x) in ring_sums.iter_mut().zip(&xs) {
                *s = ring.add(*s, *x);
            }
        }
        // Below the plaintext modulus 2^46 + 1: nothing wrapped.
        prop_assert!(coefficient_sums.iter().all(|&s| s <= 1 << 46));
        prop_assert_eq!(packing.unpack(&coefficient_sums, elements, clients).unwrap(), ring_sums);
    }
}

#[test]
fn limbs_shrink_with_the_clients_and_too_many_are_refused() {
    let ring = Ring::new(80).unwrap();
    let p = Packing::new(ring, 56, 1000).unwrap();
    assert_eq!((p.limb_bits(), p.limbs()), (46, 2)); // 56 − ⌈log2 1000⌉
    assert_eq!(Packing::new(ring, 56, 1).unwrap().limbs(), 2);
    assert_eq!(Packing::new(ring, 56, 1 << 20).unwrap().limbs(), 3); // 36-bit limbs
    let err = Packing::new(ring, 46, 1 << 39).unwrap_err();
    assert!(matches!(err, HeError::TooManyClients { .. }), "{err}");
    // A coefficient above what the survivors' limbs can sum to is a decryption failure.
    let err = p.unpack(&[1 << 47, 0], 1, 1).unwrap_err();
    assert!(err.to_string().starts_with("he_decrypt"), "{err}");
    assert!(
        p.unpack(&[0, 0, 5], 1, 2).is_err(),
        "padding must decrypt to 0"
    );
    assert!(matches!(
        Params::new(1000, 1, ring, 10, Default::default()),
        Err(HeError::Degree { degree: 1000 })
    ));
    assert!(matches!(
        Params::new(8192, 0, ring, 10, Default::default()),
        Err(HeError::KeyHolders(0))
    ));
}

fn encrypt_all(params: &Params, authority: &KeyAuthority, vectors: &[Vec<u128>]) -> EncryptedSum {
    let n = params.ciphertexts(vectors[0].len());
    let mut sum = EncryptedSum::new(1, 0..vectors.len(), authority, n);
    for (c, v) in vectors.iter().enumerate() {
        let ciphertexts = (authority.encryptor())
            .encrypt(&params.packing.pack(v), [c as u8; 32])
            .unwrap();
        let input = EncryptedInput {
            client: c,
            round: 1,
            ciphertexts,
            parameters: authority.parameters().clone(),
        };
        sum.add(&input).unwrap();
    }
    sum
}

#[test]
fn encrypted_sums_decrypt_to_the_ring_sums_with_one_or_several_key_holders() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (degree, holders, clients) in [(4096, 1, 2), (4096, 5, 33), (8192, 2, 9)] {
        let params = params(degree, holders, 81, clients);
        let ring = params.ring;
        // More elements than one ciphertext holds, so the last one is padded.
        let elements = degree / 2 + 3;
        let vectors: Vec<Vec<u128>> = (0..clients)
            .map(|_| (0..elements).map(|_| ring.reduce(rng.random())).collect())
            .collect();
        let expect: Vec<u128> = (0..elements)
            .map(|i| vectors.iter().fold(0, |s, v| ring.add(s, v[i])))
            .collect();
        let (mut authority, key_bytes) = KeyAuthority::generate(&params, [9; 32]).unwrap();
        assert!(key_bytes > 0);
        let sum = encrypt_all(&params, &authority, &vectors);
        assert_eq!(
            sum.len(),
            2,
            "2 limbs × (n/2 + 3) elements: one ciphertext and a padded one"
        );
        let (coefficients, _) = authority.decrypt(sum.into_ciphertexts()).unwrap();
        let got = params
            .packing
            .unpack(&coefficients, elements, clients)
            .unwrap();
        assert_eq!(
            got, expect,
            "degree {degree}, {holders} holders, {clients} clients"
        );
    }
}

#[test]
fn the_server_refuses_strangers_second_uploads_short_vectors_and_foreign_keys() {
    let params = params(4096, 1, 72, 4);
    let (authority, _) = KeyAuthority::generate(&params, [1; 32]).unwrap();
    let (other, _) = KeyAuthority::generate(&params, [2; 32]).unwrap();
    let zero = authority.zero();
    let mut sum = EncryptedSum::new(5, [0, 1], &authority, 2);
    let upload = |client, round, n| EncryptedInput {
        client,
        round,
        ciphertexts: vec![zero.clone(); n],
        parameters: authority.parameters().clone(),
    };
    sum.add(&upload(0, 5, 2)).unwrap();
    let foreign = EncryptedInput {
        client: 1,
        round: 5,
        ciphertexts: vec![other.zero(); 2],
        parameters: other.parameters().clone(),
    };
    for (input, why) in [
        (upload(0, 5, 2), "a second upload"),
        (upload(2, 5, 2), "not part of this round"),
        (upload(1, 4, 2), "not part of this round"),
        (upload(1, 5, 1), "1 ciphertexts, expected 2"),
        (foreign, "encrypted under other parameters"),
    ] {
        let err = sum.add(&input).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    assert_eq!(sum.uploads(), 1);
}

fn small(set: &[&str]) -> fedsim::Scenario {
    let mut all = vec![
        "strategy.fraction_fit=1.0",
        "strategy.min_fit_clients=4",
        "rounds=3",
    ];
    all.extend_from_slice(set);
    scenario(SMALL, &all).unwrap()
}

fn adapter(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn an_encrypted_run_gives_the_plain_runs_adapter_bit_for_bit_and_prices_its_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let crash = "system.crash_probability=0.3";
    let plain = run(&small(&[crash]), &tmp.path().join("plain"));
    let s = small(&[crash, HE]);
    let elements = s.lora.trainable_parameters(&s.model) + 1;
    let he = run(&s, &tmp.path().join("he"));
    assert!(adapter(&plain.dir) == adapter(&he.dir), "adapters differ");
    let rounds = round_metrics(&he.dir);
    let clients = clients_log(&he.dir);
    let mut crashed = 0;
    for r in &rounds {
        let sa = &r["secure_aggregation"];
        let round = r["round"].as_u64().unwrap();
        let mine: Vec<_> = (clients.iter())
            .filter(|c| c["round"].as_u64() == Some(round))
            .collect();
        let done = mine.iter().filter(|c| c["status"] == "completed").count();
        crashed += mine.len() - done;
        // Each upload is ⌈2 limbs × elements / 4096⌉ ciphertexts of the same size.
        let ciphertexts = (2 * elements).div_ceil(4096) as u64;
        let up = r["bytes_up"].as_u64().unwrap();
        assert_eq!(up % (done as u64 * ciphertexts), 0, "round {round}: {up}");
        assert_eq!(sa["masked"]["up_bytes"].as_u64(), Some(up));
        // Training starts after the public key's download; encryption is on the timeline.
        let keys = f(&sa["keys"], "seconds");
        let encrypt = (ciphertexts * 4096) as f64 / fedsim::he::cost::CLIENT_COEFFICIENTS_PER_S;
        for c in &mine {
            assert!(
                (f(c, "start") - (f(r, "sim_start_s") + keys)).abs() < 1e-9,
                "{c}"
            );
            assert!((f(c, "mask") - encrypt).abs() < 1e-12, "{c}");
        }
        // The last upload's addition and the decryption delay the close.
        let last = (mine.iter())
            .filter(|c| c["status"] == "completed")
            .map(|c| f(c, "finish"))
            .fold(0.0, f64::max);
        let decrypt = f(&sa["unmask"], "seconds");
        let end = f(r, "sim_start_s") + f(r, "sim_duration_s");
        assert!((end - (last + decrypt)).abs() < 1e-9, "round {round}");
        assert!(sa["key_holder_bytes"].as_u64().unwrap() > 0);
        assert_eq!(
            sa["keys"]["down_bytes"].as_u64().unwrap() % mine.len() as u64,
            0
        );
    }
    assert!(
        crashed > 0,
        "no client crashed: the dropout path was not exercised"
    ); // metrics.om: the key holders' bytes beside the phases.
    let om = std::fs::read_to_string(he.dir.join("metrics.om")).unwrap();
    let holders: u64 = (rounds.iter())
        .map(|r| {
            r["secure_aggregation"]["key_holder_bytes"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let line = format!("fedsim_secure_aggregation_bytes_total{{phase=\"key_holders\"}} {holders}");
    assert!(om.contains(&line), "{line} missing from metrics.om");
}

#[test]
fn sim_validate_states_what_each_client_uploads_encrypted() {
    let (ok, stdout, err) = crate::util::sim(&["validate", "scenarios/homomorphic_encryption.ron"]);
    assert!(ok, "{err}");
    let s = fedsim::Scenario::load(
        &crate::util::root().join("scenarios/homomorphic_encryption.ron"),
        &[],
    )
    .unwrap();
    let values = s.lora.trainable_parameters(&s.model);
    let train = s.check_data().unwrap().train as u64;
    let p = Params::new(8192, 3, Ring::for_weight(train), 10, Default::default()).unwrap();
    let (public, ciphertext) = fedsim::he::keys::sizes(&p).unwrap();
    let n = p.ciphertexts(values + 1);
    let want = format!(
        "{n} ciphertexts, {} B a client upload (plain f32: {} B); a {public}-B public key down",
        n as u64 * ciphertext,
        4 * values
    );
    assert!(stdout.contains(&want), "{want}\nnot in\n{stdout}");
}

#[test]
fn encrypted_dp_releases_the_plain_dp_runs_model_and_a_round_of_one_upload_is_withheld() {
    let tmp = tempfile::tempdir().unwrap();
    let by = "dp.noise_by=Clients(min_survivors: 2)";
    let plain = run(&small(&[DP, by]), &tmp.path().join("plain"));
    let he = run(&small(&[DP, by, HE]), &tmp.path().join("he"));
    assert!(
        adapter(&plain.dir) == adapter(&he.dir),
        "DP adapters differ"
    );
    // Two clients of which one crashes every round leave sums of one upload.
    let s = scenario(
        SMALL,
        &[
            HE,
            "strategy.min_fit_clients=2",
            "strategy.min_available_clients=2",
            "strategy.fraction_fit=0.5",
            "rounds=4",
            "system.crash_probability=0.5",
        ],
    )
    .unwrap();
    let done = run(&s, &tmp.path().join("few"));
    let rounds = round_metrics(&done.dir);
    let withheld: Vec<_> = (rounds.iter())
        .filter(|r| {
            r["skipped"]
                .as_str()
                .is_some_and(|w| w.starts_with("he_too_few"))
        })
        .collect();
    assert!(!withheld.is_empty(), "no round of one upload: {rounds:?}");
    for r in withheld {
        assert!(r["completed"].as_u64().unwrap() < 2, "{r}");
    }
}

#[test]
fn what_homomorphic_aggregation_cannot_work_with_is_refused_by_name() {
    for (set, field) in [
        (
            "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 1000))",
            "strategy.secure_aggregation.HomomorphicEncryption.scheme.Bfv.degree",
        ),
        (
            "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 8192), \
             key_holders: 17)",
            "strategy.secure_aggregation.HomomorphicEncryption.key_holders",
        ),
        (
            "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 8192), \
             decrypt_elements_per_s: Some(0.0))",
            "strategy.secure_aggregation.HomomorphicEncryption.decrypt_elements_per_s",
        ),
        ("strategy.min_fit_clients=1", "strategy.min_fit_clients"),
        ("strategy.kind=Median", "strategy.secure_aggregation"),
    ] {
        let mut all = vec![HE, "strategy.min_fit_clients=2"];
        all.push(set);
        let err = scenario(SMALL, &all).unwrap_err().to_string();
        assert!(err.contains(field), "{set}: {err}");
    }
}
