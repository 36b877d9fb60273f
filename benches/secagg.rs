//! SecAgg+ costs on the 135M adapter (460,800 values): a client's masking (encode, self
//! mask, one pairwise mask per neighbour), the server's share of a round (sum the masked
//! vectors, remove the masks, with 10 % dropped after sharing), and the plain fold of the same
//! updates for reference, and distributed DP's discrete Gaussian shares on one upload. Per
//! client: divide by the round's clients.
//!
//! Rows ending `_b55` repeat the masks and rounds with a value bound of 1 (`value_bound:
//! Some(1.0)`): a 55-bit ring, 7 bytes an element instead of 10.
//!
//! Homomorphic aggregation's units likewise (`he_*`).
//!
//! Run with: cargo bench --bench secagg (glibc's allocator set as `sim run` sets it for LoRA
//! training, for every group: see `secagg`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use fedsim::ids::ClientId;
use fedsim::secagg::graph::Graph;
use fedsim::secagg::lanes::Lanes;
use fedsim::secagg::messages::MaskedInput;
use fedsim::secagg::{Params, Ring, SecAggClient, SecAggServer};
use fedsim::strategy::FedAvgAccumulator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VALUES: usize = 460_800;
const CLIENTS: usize = 20;
const NEIGHBOURS: usize = 8;

/// The `n` clients of a round through phase 1, and the server, ready for phase 2.
fn set_up(params: Params, n: usize) -> (Vec<SecAggClient>, SecAggServer, Graph) {
    let ids: Vec<ClientId> = (0..n).collect();
    let graph = Graph::new(&ids, NEIGHBOURS, 1, 1);
    let mut server = SecAggServer::new(1, params, graph.clone(), VALUES).unwrap();
    let mut clients: Vec<SecAggClient> = ids
        .iter()
        .map(|&c| SecAggClient::new(c, 1, params, graph.of(c), [c as u8; 32]))
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
    (clients, server, graph)
}

fn secagg(c: &mut Criterion) {
    // The allocator as `sim run` sets it for LoRA training — the runs whose adapters SecAgg+
    // protects: freed uploads stay in the heap. With glibc's defaults the heap top is trimmed
    // whenever the freed uploads pile up at its end (26 ms of a round of 100 with 10 dropped,
    // then the mean's pages faulted in again), at whichever free happens to end the pile.
    fedsim::host::tune_allocator_for_training();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let updates: Vec<Vec<f32>> = (0..CLIENTS)
        .map(|_| {
            (0..VALUES)
                .map(|_| rng.random_range(-1e-2f32..1e-2))
                .collect()
        })
        .collect();
    let weight = 100u64;
    let params = Params {
        neighbours: NEIGHBOURS,
        threshold: NEIGHBOURS / 2,
        ring: Ring::for_weight(weight * 100),
        compute: Default::default(),
    };
    let mut group = c.benchmark_group("secagg_460800");
    group.sample_size(10);
    // One mask expansion over an encoded vector: the unit the clock prices masking and
    // unmasking in (elements per second, criterion's throughput line).
    group.throughput(criterion::Throughput::Elements(VALUES as u64 + 1));
    let mut v = Lanes::zeros(params.ring, VALUES + 1);
    group.bench_function("one_mask", |b| {
        b.iter(|| fedsim::secagg::mask::apply_mask(params.ring, &[7u8; 32], false, &mut v))
    });
    let streams: Vec<_> = (0..100u8)
        .map(|i| (fedsim::secagg::mask::MaskStream::new(&[i; 32]), true))
        .collect();
    // A client with k = 8 (its self mask and 8 pairwise masks, in one pass) and a server
    // removing 100 self masks: the throughputs the clock prices masking and unmasking with.
    for masks in [9, 100] {
        group.throughput(criterion::Throughput::Elements(
            masks as u64 * (VALUES as u64 + 1),
        ));
        group.bench_function(format!("masks_{masks}"), |b| {
            let streams = &streams[..masks];
            b.iter(|| fedsim::secagg::mask::apply_masks(params.ring, streams, &mut v))
        });
    }
    group.throughput(criterion::Throughput::Elements(VALUES as u64 + 1));
    let bytes = v.to_bytes(params.ring);
    let mut sum = Lanes::zeros(params.ring, VALUES + 1);
    group.bench_function("sum_one_masked", |b| {
        b.iter(|| assert_eq!(sum.add_uploads(params.ring, &[&bytes], false), [true]))
    });
    // A batch of 8, as the server sums them (the unit: one upload).
    let batch = vec![bytes.as_slice(); 8];
    group.throughput(criterion::Throughput::Elements(8 * (VALUES as u64 + 1)));
    group.bench_function("sum_8_masked", |b| {
        b.iter(|| assert_eq!(sum.add_uploads(params.ring, &batch, false), [true; 8]))
    });
    client_mask(&mut group, (params, ""), &updates[0]);
    // The server's part of a round of 20 with 2 dropped after sharing, and of 100 with none
    // dropped and with 10 dropped (the N): masked vectors in, unmasking, masks removed.
    for (n, dropped) in [(20, 2), (100, 0), (100, 10)] {
        server_round(&mut group, (params, ""), &updates, n, dropped);
    }
    bounded(&mut group, params, &updates, &streams);
    // Distributed DP's discrete Gaussian shares on one encoded upload (z = 1, C = 1, m = 10:
    // σ ≈ 3.5·10¹¹ fixed-point steps), drawn exactly.
    let share = fedsim::privacy::discrete::DistributedNoise::new(1.0, 1.0, 10)
        .unwrap()
        .share;
    group.bench_function("ddg_shares", |b| {
        let mut noise = fedsim::privacy::NoiseSource::Seeded.discrete(1, 1, 2, share);
        let mut v = vec![0u128; VALUES + 1];
        b.iter(|| params.ring.add_noise(&mut v, &mut noise))
    });
    for n in [20, 100] {
        plain_fold(&mut group, &updates, n);
    }
    group.finish();
}

/// The masks and rounds again in the ring a value bound of 1 allows for weights summing to
/// 10,000 (55 bits: 7 bytes an element).
fn bounded(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    params: Params,
    updates: &[Vec<f32>],
    streams: &[(fedsim::secagg::mask::MaskStream, bool)],
) {
    let ring = Ring::sized(100 * 100, Some(1.0)).unwrap();
    assert_eq!(ring.bits(), 55);
    let params = Params { ring, ..params };
    let mut v = Lanes::zeros(ring, VALUES + 1);
    for masks in [9, 100] {
        group.throughput(criterion::Throughput::Elements(
            masks as u64 * (VALUES as u64 + 1),
        ));
        group.bench_function(format!("masks_{masks}_b55"), |b| {
            let streams = &streams[..masks];
            b.iter(|| fedsim::secagg::mask::apply_masks(ring, streams, &mut v))
        });
    }
    client_mask(group, (params, "_b55"), &updates[0]);
    for (n, dropped) in [(100, 0), (100, 10)] {
        server_round(group, (params, "_b55"), updates, n, dropped);
    }
}

/// One client's masking with k = 8 (encode, its self mask and 8 pairwise masks, wire bytes)
/// of `update` with weight 100.
fn client_mask(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    (params, tag): (Params, &str),
    update: &[f32],
) {
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function(format!("client_mask_k{NEIGHBOURS}{tag}"), |b| {
        b.iter_batched(
            || {
                let (mut clients, mut server, _) = set_up(params, CLIENTS);
                let inbox = server.inbox_for(0);
                (clients.swap_remove(0), inbox)
            },
            |(mut client, inbox)| client.mask(inbox, update, 100).unwrap(),
            BatchSize::PerIteration,
        )
    });
}

/// The plain fold of `n` updates (reused cyclically), each handed over as a fresh buffer as a
/// message brings it, into an accumulator kept from round to round (as the aggregator's is),
/// and the mean.
fn plain_fold(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    updates: &[Vec<f32>],
    n: usize,
) {
    let mut acc = FedAvgAccumulator::new(VALUES);
    group.bench_function(format!("plain_fold_n{n}"), |b| {
        b.iter_batched(
            || updates.iter().cycle().take(n).cloned().collect::<Vec<_>>(),
            |fresh| {
                acc.reset();
                for u in fresh {
                    acc.fold_owned(u, 100).unwrap();
                }
                acc.mean().unwrap()
            },
            BatchSize::PerIteration,
        )
    });
}

/// The server's part of a round of `n` clients of which the first `dropped` drop after
/// sharing (updates reused cyclically): sum the masked vectors, unmask, remove the masks.
fn server_round(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    (params, tag): (Params, &str),
    updates: &[Vec<f32>],
    n: usize,
    dropped: usize,
) {
    let weight = 100u64;
    let (mut clients, mut server, _) = set_up(params, n);
    let masked: Vec<MaskedInput> = (0..n)
        .map(|c| {
            let inbox = server.inbox_for(c);
            let u = &updates[c % updates.len()];
            clients[c].mask(inbox, u, weight).unwrap()
        })
        .collect();
    // One pass of the protocol gives the survivors' unmasking responses; each sample then
    // replays the server's part from its state after the shares phase.
    let mut sv = server.clone();
    for m in masked.iter().skip(dropped) {
        sv.receive_masked(m.clone()).unwrap();
    }
    let request = sv.unmask_request().unwrap();
    let responses: Vec<_> = (clients.iter_mut().skip(dropped))
        .map(|c| c.unmask(&request).unwrap())
        .collect();
    // Each masked vector is a fresh buffer, as a message brings it; the sum's buffer is kept
    // from round to round (as the aggregator keeps it); the round ends with the mean.
    let name = format!("server_round_n{n}_k{NEIGHBOURS}_{dropped}dropped{tag}");
    let mut spare = None;
    group.bench_function(name, |b| {
        b.iter_batched(
            || (server.clone(), masked.clone(), responses.clone()),
            |(mut sv, masked, responses)| {
                if let Some(lanes) = spare.take() {
                    sv.reuse(lanes);
                }
                for m in masked.into_iter().skip(dropped) {
                    sv.receive_masked(m).unwrap();
                }
                sv.unmask_request().unwrap();
                for r in responses {
                    sv.receive_unmask(r).unwrap();
                }
                let out = sv.finish().unwrap();
                let mean = out.sum.decode_mean(params.ring).unwrap();
                spare = Some(out.sum);
                mean
            },
            BatchSize::PerIteration,
        )
    });
}

/// Homomorphic aggregation (BFV, n = 8192, 3 key holders) per coefficient: a client's
/// encryption, the server's parse-and-add of one uploaded ciphertext, one key holder's
/// decryption share with the shares combined — the units `he::cost` prices — and one
/// client's whole upload of the 135M adapter.
fn he(c: &mut Criterion) {
    use fedsim::he::{KeyAuthority, Params as HeParams};
    use fhe_traits::{DeserializeParametrized, Serialize};
    let ring = Ring::for_weight(100 * CLIENTS as u64);
    let params = HeParams::new(8192, 3, ring, 1000, Default::default()).unwrap();
    let (mut authority, _) = KeyAuthority::generate(&params, [3; 32]).unwrap();
    let encryptor = authority.encryptor();
    let coefficients: Vec<u64> = (0..8192u64).map(|i| i * 7919 % (1 << 40)).collect();
    let mut group = c.benchmark_group("he_bfv8192");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Elements(8192));
    group.bench_function("he_encrypt", |b| {
        b.iter(|| encryptor.encrypt(&coefficients, [5; 32]).unwrap())
    });
    let ct = encryptor.encrypt(&coefficients, [5; 32]).unwrap().remove(0);
    let bytes = ct.to_bytes();
    let bfv = authority.parameters().clone();
    let mut sum = authority.zero();
    group.bench_function("he_add", |b| {
        b.iter(|| {
            let parsed = fhe::bfv::Ciphertext::from_bytes(&bytes, &bfv).unwrap();
            sum += &parsed;
        })
    });
    // Three holders decrypt in parallel: one holder's share is a third of the three shares'
    // time; the combination runs once.
    group.bench_function("he_decrypt_3_holders", |b| {
        b.iter(|| authority.decrypt(vec![ct.clone()]).unwrap())
    });
    group.throughput(criterion::Throughput::Elements(1));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let update: Vec<f32> = (0..VALUES)
        .map(|_| rng.random_range(-1e-2f32..1e-2))
        .collect();
    group.bench_function("he_client_upload_460800", |b| {
        b.iter(|| {
            let elements = ring.encode(0, &update, 100).unwrap();
            encryptor
                .encrypt(&params.packing.pack(&elements), [6; 32])
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, secagg, he);
criterion_main!(benches);
