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
                  ("cntk-resnet", "Residual CNTK (WRN-style)"), ("myrtle-5", "Myrtle-5 CNTK"),
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
                  f"threads on {env.get('cpu_model', '?')}, torch {env.get('torch', '?')}. "
                  f"Load average (1 min) {s['load_average'][0]:.1f} at the start, "
                  f"{s['load_average'][1]:.1f} at the end; {s['cpu_seconds']:.0f} s of CPU "
                  f"time in the process."]
    return "\n".join(lines)


def render_kip_digits(payload: dict) -> str:
    """Test accuracy of learned and random support sets and of all training digits
    (kip-digits.json): mean ± std over the seeds; the payload's optional ``note`` (added to
    a full run's JSON: fewer seeds than the defaults, the load during the run) closes the
    footer."""
    s, cfg = payload["summary"], payload["config"]
    lines = ["| kernel | support images | learned (KIP) | random real | gain | "
             f"all {s['train']} training digits |", "|---|---|---|---|---|---|"]
    titles = {"mlp-ntk": "MLP NTK", "cntk": f"CNTK ({cfg['cntk_readout']} readout)"}

    def cell(c: dict) -> str:
        return f"{c['mean']:.3f}" + ("" if c["std"] is None else f" ± {c['std']:.3f}")

    for kernel, k in s["kernels"].items():
        for n, c in k["supports"].items():
            lines.append(f"| {titles.get(kernel, kernel)} | {n} | {cell(c['learned'])} | "
                         f"{cell(c['random'])} | {c['gain']:+.3f} | {k['full']:.3f} |")
    sec, env = payload.get("seconds"), payload.get("environment", {})
    lines += ["", f"{cfg['seeds']} seeds, {cfg['steps']} Adam steps (learning rate {cfg['lr']}) "
              f"on batches of {cfg['target_batch']} training digits, {s['test']} test digits, "
              f"depth {cfg['depth']}."]
    if sec:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in sec.items() if k != "total")
        threads = env.get("threads", "?")
        lines[-1] += (f" Run time {sec['total']:.0f} s ({parts}) with {threads} "
                      f"thread{'' if threads == 1 else 's'} on {env.get('cpu_model', '?')}, "
                      f"torch {env.get('torch', '?')}.")
    if payload.get("note"):  # how the run departs from the defaults, and the machine's load
        lines[-1] += f" {payload['note']}"
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


_ANALYTIC_MATCH = ("activation", "depth", "N", "dtype", "x2")
_ANALYTIC_RUNS = {"fused_s": ".4g", "eager_s": ".4g", "compiled_s": ".4g",
                  "speedup_vs_eager": ".3g", "speedup_vs_compiled": ".3g"}


def render_analytic(payload: dict) -> str:
    """bench analytic's rows; columns no row fills are left out. Times and ratios are the
    median (min–max, n) over the runs kept in the JSON (one value for n=1). For x2 = None
    the fused op computes N(N+1)/2 pairs and the eager/compiled composites N²: "sym.
    factor" is 2N/(N+1), and "× eager per pair" the ratio divided by it (x2 ≠ x1 rows:
    factor 1, every method computes N² pairs)."""
    from torch_ntk.bench.common import across_runs, median_range, runs_line, symmetry_factor
    shown = []
    for row in payload["rows"]:
        out = dict(row)
        out.setdefault("x2", "None")
        for key, fmt in _ANALYTIC_RUNS.items():
            values = across_runs(payload, out, key, _ANALYTIC_MATCH)
            if len(values) > 1:
                out[key] = median_range(values, fmt)
        if isinstance(row.get("speedup_vs_eager"), (int, float)):
            factor = symmetry_factor(row["N"]) if out["x2"] == "None" else 1.0
            out["sym_factor"] = f"{factor:.2f}"
            out["per_pair_vs_eager"] = f"{row['speedup_vs_eager'] / factor:.1f}"
            if isinstance(row.get("speedup_vs_compiled"), (int, float)):
                out["per_pair_vs_compiled"] = f"{row['speedup_vs_compiled'] / factor:.1f}"
        shown.append(out)
    columns = [c for c in _ANALYTIC if any(c[0] in r for r in shown)]
    at = [k for k, _ in columns].index("speedup_vs_compiled") + 1 if any(
        "speedup_vs_compiled" in r for r in shown) else [k for k, _ in columns].index(
        "speedup_vs_eager") + 1
    columns[at:at] = [("sym_factor", "sym. factor"), ("per_pair_vs_eager", "× eager per pair")] + (
        [("per_pair_vs_compiled", "× compiled per pair")]
        if any("per_pair_vs_compiled" in r for r in shown) else [])
    columns.insert(4, ("x2", "x2"))
    return markdown_table(shown, columns) + "\n\n" + runs_line(payload)


def _cases(payload: dict, kind: str) -> list:
    out = []
    for res in payload["results"]:
        case = res["case"]
        is_kind = ("kernel" if case.get("kernel") else "sweep" if case.get("sweep") else
                   "memory" if case.get("memory_only") else "cases")
        if is_kind == kind:
            out.append(res)
    return out


def _effective(res: dict, variant: str) -> bool:
    """A FLOP rate of ``res`` counted N² pairs where x2 = None computes N(N+1)/2: every
    x2 = None-based rate of a result written before the count was fixed."""
    return not res.get("flop_pairs") and "x2!=x1" not in variant


def render_empirical_cases(payload: dict) -> str:
    """Every method of the timed cases: median and best-of times, × structured, and the
    achieved FLOP/s over the same run's float32 matmul with median times and with best-of
    times of both (on a loaded machine the best-of ratio is the steadier one).
    × structured is the median (min–max, n) over every kept run of the case where it was
    rerun (``earlier_runs``), else the run's (median, best). "sym. factor": for x2 = None
    the structured op computes N(N+1)/2 pairs and the composite / jacobian / ntk_vp
    baselines all N², so their ratio includes 2N/(N+1). A rate marked † is effective:
    counted N² pairs for a triangle (a run from before the count was fixed)."""
    from torch_ntk.bench.common import median_range, symmetry_factor
    lines = ["| case | method | variant | status | median s | best s | × structured "
             "(median, best) | sym. factor | of matmul (median, best) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    marked = False
    for res in _cases(payload, "cases"):
        rows = res["rows"]
        runs = [res] + list(res.get("earlier_runs", []))
        matmul = next((r for r in rows if r["method"] == "matmul"), None)
        for r in rows:
            if r["method"] == "matmul":
                continue
            ratio = ", ".join(_g(r[k]) for k in ("vs_structured", "vs_structured_best") if k in r)
            values = [o["vs_structured"] for run in runs for o in run["rows"]
                      if o["method"] == r["method"] and o["variant"] == r["variant"]
                      and isinstance(o.get("vs_structured"), (int, float))]
            if len(values) > 1:
                ratio = median_range(values)
            factor = ""
            if r["method"] != "structured" and "x2!=x1" not in r["variant"] and ratio:
                factor = f"{symmetry_factor(res['case']['n']):.2f}"
            frac = ""
            if "matmul_fraction" in r and matmul and r.get("best") and matmul.get("best"):
                best = r["matmul_fraction"] * (r["seconds"] / r["best"]) * (
                    matmul["best"] / matmul["seconds"])
                frac = f"{r['matmul_fraction']:.2f}, {best:.2f}"
                if _effective(res, r["variant"]):
                    frac, marked = frac + " †", True
            status = r["status"] if r["status"] == "ok" else (
                f"{r['status']}: {r.get('message', '')[:60]}")
            lines.append(f"| {res['case']['name']} | {r['method']} | {r['variant']} | {status} | "
                         f"{_g(r.get('seconds'), '.4g')} | {_g(r.get('best'), '.4g')} | {ratio} | "
                         f"{factor} | {frac} |")
    for res in _cases(payload, "memory"):
        for r in res["rows"]:
            lines.append(f"| {res['case']['name']} | {r['method']} | {r['variant']} | "
                         f"{r['status']}; peak RSS {r['peak_rss'] / 1e9:.2f} GB | "
                         f"{_g(r.get('seconds'), '.4g')} | | | | |")
    if marked:
        lines += ["", "† effective rate: these runs counted N² pairs for x2 = None, where "
                  "the op computes N(N+1)/2 (the work done is 1/(2N/(N+1)) ≈ ½ of the count)."]
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

