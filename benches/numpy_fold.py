#!/usr/bin/env python3
"""numpy's side of `cargo bench --bench fedavg`: parse K safetensors-like uploads of 460,800 f32
values and fold them into an f32 weighted sum (inexact, order-dependent), then divide.

Run with: python3 benches/numpy_fold.py   (prints ms for K = 10 and 100, median of 10 runs)
"""
import time

import numpy as np

P = 460_800
rng = np.random.default_rng(1)
payloads = [rng.uniform(-1e-2, 1e-2, P).astype("<f4").tobytes() for _ in range(10)]


def fold(k: int) -> np.ndarray:
    acc = np.zeros(P, dtype=np.float32)
    total = 0
    for i in range(k):
        u = np.frombuffer(payloads[i % 10], dtype="<f4")  # zero-copy parse
        w = 100 + i
        acc += np.float32(w) * u
        total += w
    return acc / np.float32(total)


for k in (10, 100):
    times = []
    for _ in range(10):
        t = time.perf_counter()
        fold(k)
        times.append(time.perf_counter() - t)
    print(f"numpy parse_and_fold/{k}: {1e3 * sorted(times)[5]:.1f} ms "
          f"(numpy {np.__version__}, threads: single)")
