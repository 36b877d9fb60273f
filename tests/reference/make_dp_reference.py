"""Reference epsilons from Google's dp_accounting for tests/privacy.rs.

    pip install dp-accounting==0.6.0
    python3 tests/reference/make_dp_reference.py > tests/reference/dp_reference.json
"""
import json
from importlib.metadata import version

import dp_accounting
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp

NR = dp_accounting.NeighboringRelation
out = {"dp_accounting": version("dp-accounting"), "poisson": [], "without_replacement": []}
for q, z, t, d in [(0.01, 1.0, 100, 1e-5), (0.1, 1.0, 10, 1e-5), (0.05, 0.5, 50, 1e-5),
                   (0.2, 2.0, 200, 1e-6), (0.4, 0.02, 2, 1e-5), (0.3, 1.5, 30, 1e-3)]:
    acc = rdp.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), t)
    eps, order = acc.get_epsilon_and_optimal_order(d)
    out["poisson"].append({"q": q, "z": z, "rounds": t, "delta": d, "epsilon": eps, "order": float(order)})
for n, m, z, t, d in [(100, 10, 1.0, 10, 1e-5), (20, 4, 1.0, 50, 1e-5), (1000, 10, 0.8, 100, 1e-6),
                      (50, 20, 2.0, 20, 1e-5)]:
    acc = rdp.RdpAccountant(neighboring_relation=NR.REPLACE_ONE)
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(z)), t)
    eps, order = acc.get_epsilon_and_optimal_order(d)
    out["without_replacement"].append(
        {"n": n, "m": m, "z": z, "rounds": t, "delta": d, "epsilon": eps, "order": float(order)})
print(json.dumps(out, indent=1))
