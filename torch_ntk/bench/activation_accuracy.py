"""Accuracy of every registered activation's expectations in the analytic op, against scipy.

    python -m torch_ntk.bench.activation_accuracy [--out PATH]

For each activation (registry default parameter), variance q = q11 = q22 and correlation ρ:
the op's E[φ(u)φ(v)] and E[φ′(u)φ′(v)] (float64; one hidden layer, so NNGP = E[φφ] and
NTK = E[φ′φ′]) by its default path (closed form, Hermite series, or 2-D quadrature for
ELU/SELU) and by 2-D Gauss–Hermite quadrature of the registry's default degree, against
nested scipy.integrate.quad (the inner integral split where φ or φ′ has its kink at v = 0,
the outer at u = 0; tolerance 1e-13). Errors are relative to the Cauchy–Schwarz scale
sqrt(E[φ(u)²] E[φ(v)²]) (for φ′ likewise). Results: benchmarks/results/activation_accuracy.json.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

QS = [0.1, 1.0, 10.0]
RHOS = [-0.9, 0.0, 0.5, 0.9, 0.99]


def _reference(act, q: float, rho: float, derivative: bool) -> float:
    from scipy import integrate
    f = act.derivative if derivative else act
    g = lambda x: float(f(torch.tensor([x], dtype=torch.float64))[0])  # noqa: E731
    s = math.sqrt(1 - rho * rho)
    sq = math.sqrt(q)
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        kink = -rho * z1 / s
        val, _ = integrate.quad(lambda z2: g(sq * (rho * z1 + s * z2)) * pdf(z2), -10, 10,
                                points=[kink] if -10 < kink < 10 else None,
                                epsabs=1e-14, epsrel=1e-13, limit=200)
        return g(sq * z1) * val * pdf(z1)
    val, _ = integrate.quad(inner, -10, 10, points=[0.0], epsabs=1e-14, epsrel=1e-13, limit=200)
    return val


def _op(act, q: float, rhos, hermite_series: bool) -> tuple:
    from torch_ntk import ops
    from torch_ntk.activations import hermite_rule
    x1 = torch.tensor([[math.sqrt(q), 0.0]], dtype=torch.float64)
    x2 = torch.tensor([[math.sqrt(q) * r, math.sqrt(q) * math.sqrt(1 - r * r)] for r in rhos],
                      dtype=torch.float64)
    nodes, weights = hermite_rule(act.default_quadrature_degree or 64)
    return ops.analytic_kernels(x1, x2, 1.0, 0.0, 0.0, 1.0, [act.id], [float(act.param)], [1.0],
                                [0.0], [0.0], [0.0], nodes, weights, False, True, True,
                                hermite_series)


def run() -> list[dict]:
    from torch_ntk.activations import REGISTRY, from_name
    rows = []
    for name in REGISTRY:
        act = from_name(name)
        worst = {"default": 0.0, "quadrature": 0.0}
        for q in QS:
            n_phi = _reference_diag(act, q, False)
            n_dphi = _reference_diag(act, q, True)
            ref = [(_reference(act, q, r, False), _reference(act, q, r, True)) for r in RHOS]
            for key, series in (("default", True), ("quadrature", False)):
                nngp, ntk = _op(act, q, RHOS, series)
                for m, (e, ed) in enumerate(ref):
                    err = max(abs(float(nngp[0, m]) - e) / n_phi, abs(float(ntk[0, m]) - ed) / n_dphi)
                    worst[key] = max(worst[key], err)
        row = {"activation": name, "param": act.param, "quadrature_degree":
               act.default_quadrature_degree, "default_path": _path(act),
               "default_max_rel_err": float(f"{worst['default']:.1e}"),
               "quadrature_max_rel_err": float(f"{worst['quadrature']:.1e}")}
        rows.append(row)
        print(row, flush=True)
    return rows


def _reference_diag(act, q: float, derivative: bool) -> float:
    from scipy import integrate
    f = act.derivative if derivative else act
    g = lambda z: float(f(torch.tensor([math.sqrt(q) * z], dtype=torch.float64))[0]) ** 2 * math.exp(  # noqa: E731
        -z * z / 2) / math.sqrt(2 * math.pi)
    return integrate.quad(g, -10, 10, points=[0.0], epsabs=1e-15, epsrel=1e-13, limit=200)[0]


def _path(act) -> str:
    if act.has_closed_form:
        return "closed form"
    if act.name in ("tanh", "sigmoid", "silu", "gelu", "softplus"):
        return "Hermite series"
    return "2-D quadrature"


COLUMNS = [("activation", "activation"), ("param", "param"), ("default_path", "default path"),
           ("default_max_rel_err", "default path max rel err"),
           ("quadrature_degree", "2-D quadrature degree"),
           ("quadrature_max_rel_err", "2-D quadrature max rel err")]


def render_activation_accuracy(payload: dict) -> str:
    """Markdown table of the payload's rows."""
    from .common import markdown_table
    rows = [dict(r, quadrature_degree="—", quadrature_max_rel_err="—")
            if r["default_path"] == "closed form" else r for r in payload["rows"]]
    return (f"q = q11 = q22 ∈ {payload['qs']}, ρ ∈ {payload['rhos']}, float64, against nested "
            "scipy.integrate.quad; error relative to sqrt(E[φ(u)²]E[φ(v)²]) (φ′ likewise)\n\n"
            + markdown_table(rows, COLUMNS))


def main(argv=None) -> dict:
    from .common import machine_info, results_dir, write_json
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    payload = {"benchmark": "activation_accuracy", "machine": machine_info("cpu"), "qs": QS,
               "rhos": RHOS, "rows": run(),
               "command": "python -m torch_ntk.bench.activation_accuracy"}
    write_json(args.out or os.path.join(results_dir(), "activation_accuracy.json"), payload)
    print(render_activation_accuracy(payload))
    return payload


if __name__ == "__main__":
    main()
