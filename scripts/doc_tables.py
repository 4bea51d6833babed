"""Markdown renderers of the tables in README.md and docs/benchmarks.md, one per JSON kind.

Each ``render_<name>(payload) -> str`` turns one results file (benchmarks/results/*.json,
docs/figures/*.json) into the text between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; scripts/render_docs.py registers which file and function each
block uses. Nothing here is typed by hand: numbers are formatted, never chosen.
"""

from __future__ import annotations

from torch_ntk.bench.common import markdown_table
from torch_ntk.bench.empirical_report import kernel_markdown, sweep_markdown


def _g(value, spec: str = ".3g") -> str:
    return "" if value is None else (value if isinstance(value, str) else format(value, spec))


# ---------------------------------------------------------------------------------------
# README


def render_demo(payload: dict) -> str:
    """``torch-ntk demo``'s printed table (the code block of the README), from demo.json."""
    s = payload["summary"]
    lines = ["```",
             f"{'width':>6} {'params':>10} {'‖Θ₀−Θ∞‖/‖Θ∞‖':>14} {'drift':>8} "
             f"{'loss':>9} {'gap Θ₀':>8} {'gap Θ∞':>8} {'sec':>6}"]
    for r in s["rows"]:
        lines.append(f"{r['width']:>6} {r['params']:>10,} {r['kernel_error']:>14.4f} "
                     f"{r['drift']:>8.4f} {r['final_loss']:>9.2e} {r['gap_theta0']:>8.4f} "
                     f"{r['gap_limit']:>8.4f} {r['seconds']:>6.1f}")
    lines.append(f"log-log slopes against width: kernel error {s['slope_kernel_error']:.2f} "
                 f"(theory −0.5), drift {s['slope_drift']:.2f} (−0.5 … −1), gap to kernel "
                 f"regression {s['slope_gap_theta0']:.2f} (Θ₀) / {s['slope_gap_limit']:.2f} (Θ∞)")
    lines.append("```")
    return "\n".join(lines)


_DIGIT_METHODS = [("cntk-gap", "CNTK-GAP"), ("cntk-flatten", "CNTK-Flatten"),
                  ("mlp-ntk", "MLP NTK"), ("mlp-nngp", "MLP NNGP")]


def render_cntk_digits(payload: dict) -> str:
    """Mean ± std test accuracy per method and training-set size (cntk-digits.json)."""
    s = payload["summary"]
    methods = _DIGIT_METHODS + [(k, f"CNN, {k.split('-')[1]} channels")
                                for k in s["methods"] if k.startswith("cnn-")]
    lines = ["| method | " + " | ".join(f"n = {n}" for n in s["sizes"]) + " |",
             "|---" * (len(s["sizes"]) + 1) + "|"]
    for key, title in methods:
        m = s["methods"][key]
        cells = [f"{mu:.3f} ± {sd:.3f}" for mu, sd in zip(m["mean"], m["std"])]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    sec, env = payload.get("seconds"), payload.get("environment", {})
    if sec:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in sec.items() if k != "total")
        lines += ["", f"Run time {sec['total']:.0f} s ({parts}) with {env.get('threads', '?')} "
                  f"threads on {env.get('cpu_model', '?')}, torch {env.get('torch', '?')}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# docs/benchmarks.md


_ANALYTIC = [
    ("activation", "activation"), ("depth", "L"), ("N", "N"), ("dtype", "dtype"),
    ("fused_s", "fused s"), ("eager_s", "eager s"), ("compiled_s", "compiled s"),
    ("compile_s", "compile s"), ("speedup_vs_eager", "× eager"),
    ("speedup_vs_compiled", "× compiled"), ("pair_layers_per_s", "pair·layers/s"),
    ("fused_peak_MB", "fused peak MB"), ("eager_peak_MB", "eager peak MB"),
    ("compiled_peak_MB", "compiled peak MB"), ("outputs_MB", "outputs MB"),
    ("max_rel_diff", "max rel diff fused vs eager"),
]


def render_analytic(payload: dict) -> str:
    """bench analytic's rows; columns no row fills are left out."""
    rows = payload["rows"]
    columns = [c for c in _ANALYTIC if any(c[0] in r for r in rows)]
    return markdown_table(rows, columns)


def _cases(payload: dict, kind: str) -> list:
    out = []
    for res in payload["results"]:
        case = res["case"]
        is_kind = ("kernel" if case.get("kernel") else "sweep" if case.get("sweep") else
                   "memory" if case.get("memory_only") else "cases")
        if is_kind == kind:
            out.append(res)
    return out


def render_empirical_cases(payload: dict) -> str:
    """Every method of the timed cases: median and best-of times, × structured, and the
    achieved FLOP/s over the same run's float32 matmul with median times and with best-of
    times of both (on a loaded machine the best-of ratio is the steadier one)."""
    lines = ["| case | method | variant | status | median s | best s | × structured "
             "(median, best) | of matmul (median, best) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in _cases(payload, "cases"):
        rows = res["rows"]
        matmul = next((r for r in rows if r["method"] == "matmul"), None)
        for r in rows:
            if r["method"] == "matmul":
                continue
            ratio = ", ".join(_g(r[k]) for k in ("vs_structured", "vs_structured_best") if k in r)
            frac = ""
            if "matmul_fraction" in r and matmul and r.get("best") and matmul.get("best"):
                best = r["matmul_fraction"] * (r["seconds"] / r["best"]) * (
                    matmul["best"] / matmul["seconds"])
                frac = f"{r['matmul_fraction']:.2f}, {best:.2f}"
            status = r["status"] if r["status"] == "ok" else (
                f"{r['status']}: {r.get('message', '')[:60]}")
            lines.append(f"| {res['case']['name']} | {r['method']} | {r['variant']} | {status} | "
                         f"{_g(r.get('seconds'), '.4g')} | {_g(r.get('best'), '.4g')} | {ratio} | "
                         f"{frac} |")
    for res in _cases(payload, "memory"):
        for r in res["rows"]:
            lines.append(f"| {res['case']['name']} | {r['method']} | {r['variant']} | "
                         f"{r['status']}; peak RSS {r['peak_rss'] / 1e9:.2f} GB | "
                         f"{_g(r.get('seconds'), '.4g')} | | | |")
    return "\n".join(lines)


def render_empirical_kernel(payload: dict) -> str:
    """The kernel case (the op against its GEMMs, precisions, compiled composite)."""
    out = []
    for res in _cases(payload, "kernel"):
        out.extend(kernel_markdown(res))
    return "\n".join(out)


def render_empirical_sweep(payload: dict) -> str:
    """Every point of the width × depth × N × n_L sweep, and the range of the ratio."""
    out = []
    for res in _cases(payload, "sweep"):
        out.extend(sweep_markdown(res))
        ok = [r for r in res["rows"] if r["status"] == "ok"]
        for n_out in sorted({r["n_out"] for r in ok}):
            ratios = [r["composite_over_structured"] for r in ok if r["n_out"] == n_out]
            out.append("")
            out.append(f"n_L = {n_out}: composite / structured from {min(ratios):.2f} to "
                       f"{max(ratios):.2f} over {len(ratios)} points "
                       f"({sum(x > 1 for x in ratios)} above 1).")
    return "\n".join(out)

