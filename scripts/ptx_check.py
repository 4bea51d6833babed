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

Needs a CUDA build of torch (for its headers) and nvcc; no GPU. CI runs it after
scripts/check_cuda_build.sh (.ci/run).
"""

from __future__ import annotations

import argparse
import ast
import collections
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
    counts: dict[str, collections.Counter] = {}
    bad: list[tuple[str, str, str]] = []
    current = "<module>"
    for line in ptx.splitlines():
        m = FUNC.match(line)
        if m:
            current = m.group(2)
            counts.setdefault(current, collections.Counter())
            continue
        code = line.split("//", 1)[0]
        if not code.strip():
            continue
        c = counts.setdefault(current, collections.Counter())
        for name, pat in PATTERNS:
            if pat.search(code):
                c[name] += 1
        for what, pat in FORBIDDEN:
            if pat.search(code):
                bad.append((current, what, code.strip()))
    return counts, bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="compute_90", help="virtual architecture (default %(default)s)")
    ap.add_argument("--ptx-dir", help="write the PTX files here (default: a temporary folder)")
    ap.add_argument("--extra-flag", action="append", default=[], metavar="FLAG",
                    help="append an nvcc flag (e.g. --extra-flag=--use_fast_math, to see the "
                         "check fail)")
    ap.add_argument("sources", nargs="*", help="the .cu files (default: csrc/cuda/*.cu)")
    args = ap.parse_args(argv)
    sources = [Path(s) for s in args.sources] or sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    nvcc = find_nvcc()
    print("ptx_check: nvcc", nvcc, "flags", " ".join(nvcc_flags_from_setup() + args.extra_flag))
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.ptx_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for cu in sources:
            ptx_path = out_dir / (cu.stem + ".ptx")
            compile_ptx(cu, ptx_path, nvcc, args.arch, args.extra_flag)
            counts, bad = scan(ptx_path.read_text())
            names = demangle(list(counts))
            cols = [name for name, _ in PATTERNS]
            print(f"\n== {cu.relative_to(ROOT) if cu.is_absolute() else cu} ({args.arch})")
            print(f"{'dtype':6} {'function':60} " + " ".join(f"{c:>14}" for c in cols))
            total: collections.Counter = collections.Counter()
            for fn, c in counts.items():
                if fn == "<module>" and not c:
                    continue
                pretty = names.get(fn, fn)
                dtype = "f32" if "<float>" in pretty else ("f64" if "<double>" in pretty else "-")
                short = pretty.replace("(anonymous namespace)::", "").replace("torch_ntk::", "")
                short = re.sub(r"^void ", "", re.sub(r"\(.*", "", short))
                print(f"{dtype:6} {short[:60]:60} " + " ".join(f"{c[k]:>14}" for k in cols))
                total.update(c)
            print(f"{'':6} {'TOTAL':60} " + " ".join(f"{total[k]:>14}" for k in cols))
            for fn, what, line in bad:
                print(f"ptx_check: FORBIDDEN {what} in {names.get(fn, fn)[:100]}: {line}")
            failures += len(bad)
    if failures:
        print(f"\nptx_check: FAILED, {failures} forbidden approximate instructions "
              "(is --use_fast_math back in setup.py?)")
        return 1
    print("\nptx_check: OK, no approximate sqrt/division/tanh and no flush-to-zero sqrt/division")
    return 0


if __name__ == "__main__":
    sys.exit(main())
