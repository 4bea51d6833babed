"""Count the approximate floating-point instructions in the PTX of the CUDA kernels.

Compiles every csrc/cuda/*.cu to PTX (nvcc -ptx, virtual arch compute_90 unless
--arch says otherwise) with the device flags of the build (setup.py NVCC_FLAGS, read as a
literal without running setup.py), torch's common nvcc flags and include paths, then
prints, per kernel (``.entry``) and per non-inlined device function (``.func``), the
counts of approximate and flush-to-zero instructions:

    sqrt.approx  div.approx  div.full  rcp.approx  rsqrt.approx  ex2.approx  lg2.approx
    tanh.approx  sin/cos.approx  .ftz (any instruction)

It fails (exit 1) when the PTX holds an approximate float32 square root or division
(sqrt.approx.f32, div.approx.f32, div.full.f32), any tanh.approx, or any flush-to-zero
square root or division: what --use_fast_math produces, and what breaks the exact
diagonal of the ReLU family (sqrt(q*q) == q). ex2.approx, lg2.approx and rcp.approx are
reported but allowed: CUDA's IEEE-accurate expf, erff, logf and float64 helpers use them
internally with their own range reduction and correction steps.

    CUDA_HOME=/usr/local/cuda PYTHON=.venv-cuda/bin/python python scripts/ptx_check.py
    python scripts/ptx_check.py --ptx-dir /tmp/ptx   # keep the PTX files

It also counts the 64-bit integer divisions and remainders (``div/rem.s64|u64``, each a
software routine of tens of instructions) per function and, from the ``.loc`` line
information of -lineinfo, per source line (``--sites``), and with ``--resources`` runs
ptxas -v on the PTX (sm_XX of compute_XX) for each kernel's registers, stack frame, spills
and static shared memory. ``--json FILE`` writes all of it; ``--from-ptx DIR`` scans PTX
files already made (e.g. of an older commit) instead of compiling.

    python scripts/ptx_check.py --resources --sites --json benchmarks/results/ptx_check.json

render_ptx_check renders that JSON into docs/cuda.md (scripts/render_docs.py).

Needs a CUDA build of torch (for its headers) and nvcc; no GPU. CI runs it after
scripts/check_cuda_build.sh (.ci/run), without --resources (ptxas doubles the time).
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (column, regular expression over one PTX instruction line)
PATTERNS = [
    ("sqrt.approx", re.compile(r"\bsqrt\.approx\.")),
    ("div.approx", re.compile(r"\bdiv\.approx\.")),
    ("div.full", re.compile(r"\bdiv\.full\.")),
    ("rcp.approx", re.compile(r"\brcp\.approx\.")),
    ("rsqrt.approx", re.compile(r"\brsqrt\.approx\.")),
    ("ex2.approx", re.compile(r"\bex2\.approx\.")),
    ("lg2.approx", re.compile(r"\blg2\.approx\.")),
    ("tanh.approx", re.compile(r"\btanh\.approx\.")),
    ("sin/cos.approx", re.compile(r"\b(sin|cos)\.approx\.")),
    (".ftz", re.compile(r"\.ftz\b")),
]
# Instructions that must not appear anywhere (what --use_fast_math introduces).
FORBIDDEN = [
    ("approximate float32 sqrt", re.compile(r"\bsqrt\.approx\.(ftz\.)?f32\b")),
    ("approximate float32 division", re.compile(r"\bdiv\.(approx|full)\.(ftz\.)?f32\b")),
    ("approximate tanh", re.compile(r"\btanh\.approx\.")),
    ("flush-to-zero sqrt/division", re.compile(r"\b(sqrt|div)\.[a-z]+\.ftz\.")),
]
FUNC = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.(entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)")
DIV64 = re.compile(r"\b(div|rem)\.(s|u)64\b")
LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")
FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')


def nvcc_flags_from_setup() -> list[str]:
    """setup.py's NVCC_FLAGS literal."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "NVCC_FLAGS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit("ptx_check: setup.py defines no NVCC_FLAGS list")


def find_nvcc() -> str:
    home = os.environ.get("CUDA_HOME")
    if not home and Path("/usr/local/cuda").exists():
        home = str(Path("/usr/local/cuda").resolve())
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("ptx_check: no nvcc found (set CUDA_HOME to the toolkit root)")
    return nvcc


def compile_ptx(cu: Path, out: Path, nvcc: str, arch: str, extra: list[str]) -> None:
    import torch.utils.cpp_extension as ext

    includes = ext.include_paths(device_type="cuda") + [sysconfig.get_paths()["include"]]
    cmd = [nvcc, "-ptx", f"-arch={arch}", "-std=c++20", "-DTORCH_NTK_WITH_CUDA",
           "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    cmd += ext.COMMON_NVCC_FLAGS + nvcc_flags_from_setup() + extra
    cmd += [f"-I{p}" for p in includes] + [str(cu), "-o", str(out)]
    subprocess.run(cmd, check=True)


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if tool is None:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def scan(ptx: str) -> tuple[dict[str, collections.Counter], list[tuple[str, str, str]]]:
    """Per-function counts, and the forbidden instructions found (function, what, line)."""
    counts, bad, _ = scan_sites(ptx)
    return counts, bad


def scan_sites(ptx: str):
    """scan, plus the 64-bit divisions by source line: {(function, file, line): count}
    (file and line of the last ``.loc`` with a line before the instruction; "?" without
    -lineinfo). An attribution, not a proof: read the line it names and the code before."""
    counts: dict[str, collections.Counter] = {}
    bad: list[tuple[str, str, str]] = []
    sites: collections.Counter = collections.Counter()
    files = {f.group(1): f.group(2) for f in map(FILE.match, ptx.splitlines()) if f}
    current, loc = "<module>", ("?", 0)
    for line in ptx.splitlines():
        m = FUNC.match(line)
        if m:
            current = m.group(2)
            counts.setdefault(current, collections.Counter())
            continue
        if FILE.match(line):
            continue
        lm = LOC.match(line)
        if lm:
            # Line 0 marks code the optimizer moved or merged (nvcc gives the divisions it
            # hoists out of loops line 0): keep the last real line, the nearest source.
            if int(lm.group(2)) > 0:
                loc = (files.get(lm.group(1), "?"), int(lm.group(2)))
            continue
        code = line.split("//", 1)[0]
        if not code.strip():
            continue
        c = counts.setdefault(current, collections.Counter())
        for name, pat in PATTERNS:
            if pat.search(code):
                c[name] += 1
        if DIV64.search(code):
            c["div/rem.64"] += 1
            sites[(current, *loc)] += 1
        for what, pat in FORBIDDEN:
            if pat.search(code):
                bad.append((current, what, code.strip()))
    return counts, bad, sites


RES_ENTRY = re.compile(r"Compiling entry function '([\w$]+)'")
RES_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RES_USED = re.compile(r"Used (\d+) registers")
RES_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_resources(ptx_path: Path, nvcc: str, arch: str) -> dict[str, dict[str, int]]:
    """Per kernel: registers, stack frame, spill stores/loads, static shared memory (bytes),
    from ``ptxas -v`` on the PTX for the real architecture of ``arch``."""
    ptxas = str(Path(nvcc).with_name("ptxas"))
    sm = arch.replace("compute_", "sm_")
    res = subprocess.run([ptxas, f"-arch={sm}", "-v", str(ptx_path), "-o", os.devnull],
                         capture_output=True, text=True, check=True)
    return parse_ptxas(res.stderr)


def parse_ptxas(text: str) -> dict[str, dict[str, int]]:
    """ptxas -v's report, per kernel (mangled name): registers, stack, spills, smem."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = RES_ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), {"registers": 0, "stack": 0, "spill_stores": 0,
                                                  "spill_loads": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = RES_FRAME.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = RES_USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            sm_bytes = RES_SMEM.search(line)
            current["smem"] = int(sm_bytes.group(1)) if sm_bytes else 0
    return out


def short_name(pretty: str) -> str:
    short = pretty.replace("(anonymous namespace)::", "").replace("torch_ntk::", "")
    return re.sub(r"^void ", "", re.sub(r"\(.*", "", short))


def relative_source(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def source_line(path: str, line: int) -> str:
    try:
        return Path(path).read_text().splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def source_text(rel: str, line: int, rev: str | None) -> str:
    """Line ``line`` of repository file ``rel`` in the work tree, or at commit ``rev``."""
    if rev is None:
        return source_line(str(ROOT / rel), line)
    res = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True,
                         text=True)
    lines = res.stdout.splitlines()
    return lines[line - 1].strip() if res.returncode == 0 and 0 < line <= len(lines) else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="compute_90", help="virtual architecture (default %(default)s)")
    ap.add_argument("--ptx-dir", help="write the PTX files here (default: a temporary folder)")
    ap.add_argument("--from-ptx", metavar="DIR",
                    help="scan DIR/<name>.ptx of each source instead of compiling")
    ap.add_argument("--source-rev", metavar="REV",
                    help="with --from-ptx: the commit the PTX was made from (source lines)")
    ap.add_argument("--extra-flag", action="append", default=[], metavar="FLAG",
                    help="append an nvcc flag (e.g. --extra-flag=--use_fast_math, to see the "
                         "check fail)")
    ap.add_argument("--sites", action="store_true",
                    help="list the source lines of the 64-bit divisions/remainders")
    ap.add_argument("--resources", action="store_true",
                    help="registers, stack and spills per kernel (ptxas -v)")
    ap.add_argument("--json", metavar="FILE", help="write the counts, sites and resources here")
    ap.add_argument("sources", nargs="*", help="the .cu files (default: csrc/cuda/*.cu)")
    args = ap.parse_args(argv)
    sources = [Path(s) for s in args.sources] or sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    nvcc = find_nvcc()
    print("ptx_check: nvcc", nvcc, "flags", " ".join(nvcc_flags_from_setup() + args.extra_flag))
    failures = 0
    rev = args.source_rev
    if rev is None:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "csrc"],
                               capture_output=True, text=True).stdout.strip()
        label = head + (" + uncommitted csrc changes" if dirty else "")
    else:
        label = rev
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    report: dict = {"source": label, "arch": args.arch,
                    "nvcc": (re.findall(r"release [\d.]+, V[\d.]+", version) or ["?"])[0],
                    "flags": nvcc_flags_from_setup() + args.extra_flag, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.ptx_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for cu in sources:
            if args.from_ptx:
                ptx_path = Path(args.from_ptx) / (cu.stem + ".ptx")
            else:
                ptx_path = out_dir / (cu.stem + ".ptx")
                compile_ptx(cu, ptx_path, nvcc, args.arch, args.extra_flag)
            counts, bad, sites = scan_sites(ptx_path.read_text())
            names = demangle(list(counts))
            cols = [name for name, _ in PATTERNS] + ["div/rem.64"]
            rel = str(cu.relative_to(ROOT)) if cu.is_absolute() else str(cu)
            print(f"\n== {rel} ({args.arch})")
            print(f"{'dtype':6} {'function':60} " + " ".join(f"{c:>14}" for c in cols))
            total: collections.Counter = collections.Counter()
            entry: dict = {"functions": {}, "div64_sites": [], "resources": {}}
            for fn, c in counts.items():
                if fn == "<module>" and not c:
                    continue
                pretty = names.get(fn, fn)
                dtype = "f32" if "<float>" in pretty else ("f64" if "<double>" in pretty else "-")
                short = short_name(pretty)
                print(f"{dtype:6} {short[:60]:60} " + " ".join(f"{c[k]:>14}" for k in cols))
                total.update(c)
                entry["functions"][short] = dict(c)
            print(f"{'':6} {'TOTAL':60} " + " ".join(f"{total[k]:>14}" for k in cols))
            entry["div64_total"] = total["div/rem.64"]
            for (fn, path, line), n in sorted(sites.items(), key=lambda t: (t[0][1], t[0][2])):
                src = relative_source(path)
                entry["div64_sites"].append({
                    "function": short_name(names.get(fn, fn)), "file": src, "line": line,
                    "count": n, "text": source_text(src, line, rev) if line else ""})
            if args.sites and entry["div64_sites"]:
                print(f"64-bit div/rem by source line ({total['div/rem.64']} in all):")
                for site in entry["div64_sites"]:
                    print(f"  {site['count']:3}  {site['file']}:{site['line']:<5} "
                          f"[{site['function'][:40]}]  {site['text'][:70]}")
            if args.resources:
                res = ptxas_resources(ptx_path, nvcc, args.arch)
                print(f"{'kernel (ptxas -v, ' + args.arch.replace('compute_', 'sm_') + ')':66} "
                      f"{'registers':>9} {'stack B':>8} {'spill st':>8} {'spill ld':>8} {'smem B':>8}")
                for fn, r in res.items():
                    short = short_name(names.get(fn, fn) if fn in names else demangle([fn])[fn])
                    entry["resources"][short] = r
                    print(f"{short[:66]:66} {r['registers']:>9} {r['stack']:>8} "
                          f"{r['spill_stores']:>8} {r['spill_loads']:>8} {r['smem']:>8}")
            for fn, what, line in bad:
                print(f"ptx_check: FORBIDDEN {what} in {names.get(fn, fn)[:100]}: {line}")
            failures += len(bad)
            report["files"][rel] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if failures:
        print(f"\nptx_check: FAILED, {failures} forbidden approximate instructions "
              "(is --use_fast_math back in setup.py?)")
        return 1
    print("\nptx_check: OK, no approximate sqrt/division/tanh and no flush-to-zero sqrt/division")
    return 0


def render_ptx_check(payload: dict) -> str:
    """docs/cuda.md's table of a ptx_check --json run (scripts/render_docs.py): per kernel
    its registers, stack frame and spills, and the 64-bit divisions per file; with
    payload["before"] (an older run, same layout) beside it."""
    before = payload.get("before") or {"files": {}}
    lines = [f"`scripts/ptx_check.py` at {payload['source']} (nvcc {payload['nvcc']}, "
             f"{payload['arch']}; flags {' '.join(payload['flags'])}), ptxas -v for "
             f"{payload['arch'].replace('compute_', 'sm_')}"
             + (f"; before: {before['source']}." if "source" in before else "."), "",
             "| kernel | registers | stack frame, B | spill stores/loads, B | before: registers "
             "| before: stack, B |", "|---|---:|---:|---:|---:|---:|"]
    for rel, entry in payload["files"].items():
        old = before["files"].get(rel, {}).get("resources", {})
        for name, r in entry["resources"].items():
            o = old.get(name)
            lines.append(f"| `{name}` ({rel.split('/')[-1]}) | {r['registers']} | {r['stack']} | "
                         f"{r['spill_stores']}/{r['spill_loads']} | "
                         f"{o['registers'] if o else '—'} | {o['stack'] if o else '—'} |")
    lines += ["", "| file | 64-bit div/rem in the PTX | before |", "|---|---:|---:|"]
    for rel, entry in payload["files"].items():
        old = before["files"].get(rel, {}).get("div64_total", "—")
        lines.append(f"| {rel} | {entry['div64_total']} | {old} |")
    lines += ["", "The 64-bit divisions left, by the source line `--sites` attributes them to:", "",
              "| source line | kernel | count | code | how often |", "|---|---|---:|---|---|"]
    for entry in payload["files"].values():
        for site in entry["div64_sites"]:
            code = site["text"].replace("|", "\\|")
            lines.append(f"| {site['file']}:{site['line']} | `{site['function']}` | "
                         f"{site['count']} | `{code}` | {division_reason(site)} |")
    return "\n".join(lines)


def division_reason(site: dict) -> str:
    """How often a 64-bit division site runs (the audit of docs/cuda.md)."""
    fn, text = site["function"], site["text"]
    if fn.startswith(("accumulate_layer_kernel", "mirror_lower_kernel")):
        return ("per output entry (runtime divisor; nvcc takes its 32-bit path when both "
                "operands fit, as they do for any output a GPU holds); outside issue 28")
    if fn.startswith("fallback_kernel"):
        return ("once per non-empty mask word" if "mask_words" in text else
                "once per fallback pair (the (i, j) of `run`, inlined)")
    if "/ a.n2" in text:
        return "once per pair"
    return "not classified: read the line"


if __name__ == "__main__":
    sys.exit(main())
