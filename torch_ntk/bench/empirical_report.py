"""The empirical suite's report: the kernel case's summary and the markdown tables."""

from __future__ import annotations

from .empirical_measure import PRECISIONS

def kernel_summary(by_key: dict) -> dict:
    """The numbers of target (b), in one place."""
    def get(method, variant, field):
        return by_key.get((method, variant), {}).get(field)

    out = {
        "op_over_gemms_x2_none": get("structured op only", "x2=None, highest", "vs_gemms"),
        "op_over_gemms_x2_distinct": get("structured op only", "x2!=x1, highest", "vs_gemms"),
        "end_to_end_over_gemms_plus_features": get("structured", "x2=None, highest", "vs_gemms"),
        "composite_over_structured": get("composite", "x2=None", "vs_structured"),
        "compiled_over_structured": get("composite compiled", "x2=None", "vs_structured"),
        "compile_s": get("composite compiled", "x2=None", "compile_s"),
    }
    for p in PRECISIONS:
        if p != "highest":
            out[f"{p}_op_speedup"] = get("structured op only", f"x2!=x1, {p}", "speedup_vs_highest")
            out[f"{p}_end_to_end_speedup"] = get("structured", f"x2=None, {p}", "speedup_vs_highest")
        out[f"{p}_err_fro"] = get("structured op only", f"x2=None, {p}", "err_fro")
        out[f"{p}_err_max"] = get("structured op only", f"x2=None, {p}", "err_max")
        out[f"{p}_op_err_fro"] = get("structured op only", f"x2=None, {p}", "op_err_fro")
    return out


def sweep_markdown(res: dict) -> list[str]:
    gflops = ("structured GFLOP/s" if res.get("flop_pairs") else
              "structured GFLOP/s (effective: N² pairs counted for x2 = None's N(N+1)/2)")
    lines = ["| width | depth | N | n_L | structured s | composite s | composite / structured "
             f"| {gflops} | max rel diff | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ok = r["status"] == "ok"
        lines.append(
            f"| {r['width']} | {r['depth']} | {r['n']} | {r['n_out']} | "
            + (f"{r['structured_s']:.4g} | {r['composite_s']:.4g} | "
               f"{r['composite_over_structured']:.2f} | {r['gflops']:.1f} | "
               f"{r['max_rel_diff']:.1e} | ok |" if ok else
               f" | | | | | {r['status']}: {r.get('message', '')} |"))
    return lines


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def kernel_markdown(res: dict) -> list[str]:
    effective = "" if res.get("flop_pairs") else " †"
    lines = ["| method | variant | status | median s | best s | × gemms | × structured | "
             f"speedup vs highest | GFLOP/s{effective} | of roofline{effective} | "
             "err vs f64 model (Frobenius, max) | "
             "op err vs f64 op (Frobenius, max) | peak MB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        err = (f"{r['err_fro']:.1e}, {r['err_max']:.1e}" if "err_fro" in r else "")
        op_err = (f"{r['op_err_fro']:.1e}, {r['op_err_max']:.1e}" if "op_err_fro" in r else "")
        frac = (f"{100 * r['roofline_fraction']:.0f}% of {r['roofline']}"
                if "roofline_fraction" in r else "")
        note = r.get("message", "")
        if "compile_s" in r:
            note = f"compile {r['compile_s']:.1f} s" + (f"; {note}" if note else "")
        if "max_rel_diff" in r and not note:
            note = f"max rel diff vs structured {r['max_rel_diff']:.1e}"
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['status']} | {_fmt(r.get('seconds'), '.4g')} | "
            f"{_fmt(r.get('best'), '.4g')} | {_fmt(r.get('vs_gemms'), '.3g')} | "
            f"{_fmt(r.get('vs_structured'), '.3g')} | {_fmt(r.get('speedup_vs_highest'), '.3g')} | "
            f"{_fmt(r.get('gflops'), '.1f')} | {frac} | {err} | {op_err} | "
            f"{_fmt(r.get('peak_MB'), '.0f')} | "
            f"{note} |")
    s = res.get("summary", {})
    lines.append("")
    if effective:
        lines.append("† effective on x2=None rows: this run counted N² pairs where the op "
                     "computes N(N+1)/2 (the work done is ≈ half the count; x2!=x1 rows are "
                     "exact).")
        lines.append("")
    lines.append(
        "Target (b): structured op / gemms alone = "
        f"{_fmt(s.get('op_over_gemms_x2_none'), '.3g')} (x2=None, half the tiles), "
        f"{_fmt(s.get('op_over_gemms_x2_distinct'), '.3g')} (x2!=x1); end to end / (gemms + "
        f"features) = {_fmt(s.get('end_to_end_over_gemms_plus_features'), '.3g')}; "
        f"highest: err {_fmt(s.get('highest_err_fro'), '.1e')} (op alone "
        f"{_fmt(s.get('highest_op_err_fro'), '.1e')}); "
        + "; ".join(f"{p}: op speedup {_fmt(s.get(f'{p}_op_speedup'), '.3g')} (x2!=x1), "
                    f"end to end {_fmt(s.get(f'{p}_end_to_end_speedup'), '.3g')}, err "
                    f"{_fmt(s.get(f'{p}_err_fro'), '.1e')} (op alone "
                    f"{_fmt(s.get(f'{p}_op_err_fro'), '.1e')})" for p in PRECISIONS[1:]) + ".")
    return lines


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        case = res["case"]
        lines.append(f"\n### {case['name']} (mode {case['mode']}; target: {case['target']}; "
                     f"load average at start {res.get('load_at_start', float('nan')):.2f})\n")
        if case.get("kernel"):
            lines.extend(kernel_markdown(res))
            continue
        if case.get("sweep"):
            lines.extend(sweep_markdown(res))
            continue
        lines.append("| method | variant | status | seconds (median) | best | × structured "
                     "(median, best) | GFLOP/s | % matmul | note |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in res["rows"]:
            sec = f"{r['seconds']:.4g}" if "seconds" in r else ""
            best = f"{r['best']:.4g}" if "best" in r else ""
            ratio = f"{r['vs_structured']:.3g}" if "vs_structured" in r else ""
            if "vs_structured_best" in r:
                ratio += f", {r['vs_structured_best']:.3g}"
            gf = f"{r['gflops']:.1f}" if "gflops" in r else ""
            frac = f"{100 * r['matmul_fraction']:.0f}%" if "matmul_fraction" in r else ""
            note = r.get("message", "")
            if "peak_rss" in r:
                note = (f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB (before call "
                        f"{r['rss_before'] / 2**30:.2f} GiB)")
                if r.get("peak_device") is not None:
                    note += f", peak device {r['peak_device'] / 2**30:.2f} GiB"
            if "max_rel_diff" in r:
                note = f"max rel diff vs structured {r['max_rel_diff']:.1e}"
            lines.append(f"| {r['method']} | {r['variant']} | {r['status']} | {sec} | {best} | "
                         f"{ratio} | {gf} | {frac} | {note} |")
    return "\n".join(lines)
