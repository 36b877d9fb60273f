"""Reference epsilons of the distributed discrete Gaussian for tests/ddg.rs.

Written from Kairouz, Liu & Steinke (2021): Theorem 1's tau, Eq. 17's RDP, and Zhu & Wang
(2019)'s general Poisson-subsampling upper bound at integer orders (the bound Google's
distributed_dp accounting uses), evaluated with scipy in float64; RDP -> (eps, delta) by
dp_accounting's conversion, at dp_accounting's default orders (fractional orders take the
RDP at their ceiling, at least 2).

    pip install dp-accounting==0.6.0 scipy
    python3 tests/reference/make_ddg_reference.py > tests/reference/ddg_reference.json
"""
import json
import math
from importlib.metadata import version

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special

ORDERS = ([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


def tau(variance, n):
    return 10 * sum(math.exp(-2 * math.pi ** 2 * variance * k / (k + 1)) for k in range(1, n))


def eq17(alpha, s, t, d):
    return min(alpha * s * s / 2 + t * d, alpha / 2 * (s + math.sqrt(d) * t) ** 2)


def subsampled(alpha, q, eps):
    """Zhu & Wang (2019), general upper bound, integer alpha >= 2."""
    lc = lambda n, k: special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    a = [(alpha - 1) * math.log1p(-q) + math.log(alpha * q - q + 1),
         lc(alpha, 2) + 2 * math.log(q) + (alpha - 2) * math.log1p(-q) + eps(2)]
    for l in range(3, alpha + 1):
        a.append(math.log(3) + lc(alpha, l) + (alpha - l) * math.log1p(-q) + l * math.log(q)
                 + (l - 1) * eps(l))
    return special.logsumexp(a) / (alpha - 1)


def ddg_rdp(q, s, t, d, order):
    a = max(2, math.ceil(order))
    eps = lambda l: eq17(l, s, t, d)
    if q >= 1:
        return eps(a)
    return min(subsampled(a, q, eps), eps(a))


out = {"dp_accounting": version("dp-accounting"), "scipy": version("scipy"), "cases": []}
# (q, s, rounds, delta, variance, n, dim): s = sensitivity / (sqrt(n) * sigma).
for q, s, rounds, delta, var, n, d in [
        (0.1, 1.0, 10, 1e-5, 1e22, 10, 0), (0.01, 0.9, 100, 1e-5, 1e22, 4, 0),
        (0.4, 1 / 0.537066, 3, 1e-5, 1e20, 2, 0), (1.0, 1.0, 5, 1e-5, 1e22, 10, 0),
        (0.2, 0.5, 50, 1e-6, 1e22, 20, 0), (0.05, 2.0, 20, 1e-3, 1e22, 5, 0),
        # small variance: tau > 0 and the dimension terms of Eq. 17 matter
        (1.0, 1.0, 3, 1e-5, 0.25, 5, 1000), (0.3, 0.5, 10, 1e-5, 0.3, 3, 200)]:
    t = tau(var, n)
    curve = [rounds * ddg_rdp(q, s, t, d, o) for o in ORDERS]
    eps, order = rdp.compute_epsilon(ORDERS, curve, delta)
    out["cases"].append({"q": q, "scale": s, "rounds": rounds, "delta": delta, "variance": var,
                         "clients": n, "dim": d, "tau": t, "epsilon": eps,
                         "order": float(order), "rdp_at_8": ddg_rdp(q, s, t, d, 8.0)})
print(json.dumps(out, indent=1))
