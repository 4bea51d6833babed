"""Deliberate faults, one at a time, in a copy of the package: which test kills each?

Each fault replaces one exact piece of source text (Python or C++) in a temporary copy of
the working tree, runs the tests named for it (``pytest -x``) against that copy and
records the first failing test. A fault no test kills is a gap in the test suite. C++
faults rebuild the extension in the copy (``setup.py build_ext --inplace``; the first one
builds everything, later ones only what ninja finds changed), so they run last, after
the Python faults have used the prebuilt extension.

    python scripts/mutation_check.py                     # every fault (about half an hour)
    python scripts/mutation_check.py --only mse_rate     # some faults, by name
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py --json benchmarks/results/mutation_check.json --md -

Not part of the default test run. The table (:func:`render_mutation`) is rendered into
docs by scripts/render_docs.py from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Fault:
    name: str
    area: str          # analytic, empirical, predict, tracker, monte carlo, distributed, cli
    path: str          # relative to the repository root
    old: str           # must occur exactly once in the file
    new: str
    tests: tuple       # pytest arguments (files, node ids, -k expressions)
    what: str          # the mistake, in words

    @property
    def cpp(self) -> bool:
        return self.path.startswith("csrc/")


FAULTS = [
    # --- analytic (Python) ---
    Fault("input_bias_dropped", "analytic", "torch_ntk/analytic/fused.py",
          "input_bias_var=first.bias_var,", "input_bias_var=0.0,",
          ("tests/test_independent.py", "-k", "recursion"),
          "the first layer's σ_b² left out of Σ¹"),
    Fault("torch_linear_bias_var", "analytic", "torch_ntk/layers/dense.py",
          "bias_var = 1.0 / (3.0 * fan_in) if bias_var is None else float(bias_var)",
          "bias_var = 1.0 / fan_in if bias_var is None else float(bias_var)",
          ("tests/test_independent.py", "-k", "torch"),
          "nn.Linear's bias variance taken as 1/fan_in instead of 1/(3 fan_in)"),
    Fault("ntk_linear_bias_unscaled", "analytic", "torch_ntk/nn.py",
          "out = out + self.bias_scale * self.bias", "out = out + self.bias",
          ("tests/test_analytic.py", "tests/test_empirical.py", "-k", "modules or oracle"),
          "NTKLinear's forward adds b without σ_b (the lifted law keeps σ_b)"),
    Fault("softplus_derivative_beta", "analytic", "torch_ntk/activations.py",
          "lambda x, p: _where(p * x > 20, 1.0, torch.sigmoid(p * x), x)",
          "lambda x, p: _where(p * x > 20, 1.0, torch.sigmoid(x), x)",
          ("tests/test_activations.py",),
          "softplus′ ignores β"),
    Fault("cnn_pool_stride_as_kernel", "analytic", "torch_ntk/layers/pool.py",
          "    return AVGPOOL, [*k, *s], []", "    return AVGPOOL, [*k, *k], []",
          ("tests/test_cnn_op.py", "tests/test_cnn.py"),
          "the CNN op's program reads an average pool's stride as its kernel size"),
    Fault("sum_pool_window_once", "analytic", "torch_ntk/layers/sum_pool.py",
          "float(math.prod(layer.kernel_size)) ** 2)", "float(math.prod(layer.kernel_size)))",
          ("tests/test_layer_rules.py",),
          "sum pooling scales the kernels by |B| instead of |B|²"),
    # --- empirical (Python) ---
    Fault("conv_rule_bias_unscaled", "empirical", "torch_ntk/empirical/rules/conv.py",
          "parts.append(self.bias.mul(self.cb ** 0.5).view(n, nl, -1))",
          "parts.append(self.bias.view(n, nl, -1))",
          ("tests/test_cnn_structured.py", "tests/test_empirical_rules.py"),
          "the conv rule's per-sample bias gradients lose √c_b (the gradients order)"),
    Fault("structured_bias_coef", "empirical", "torch_ntk/empirical/rules/__init__.py",
          "return (cw if weight_on else 0.0, cb if bias_on else 0.0)",
          "return (cw if weight_on else 0.0, 0.0)",
          ("tests/test_empirical.py", "-k", "oracle"),
          "the structured NTK leaves out every bias term"),
    # --- predict ---
    Fault("mse_rate_without_n", "predict", "torch_ntk/predict/mse.py",
          "    rate = learning_rate / n\n    y_shape = tuple(y_train.shape)\n",
          "    rate = learning_rate\n    y_shape = tuple(y_train.shape)\n",
          ("tests/test_predict.py",),
          "the ensemble law's gradient-flow rate η/N taken as η"),
    Fault("ode_cross_entropy_gradient", "predict", "torch_ntk/predict/ode.py",
          "return lambda f, check=False: (torch.softmax(f, -1) - target) / n",
          "return lambda f, check=False: (torch.softmax(f, 0) - target) / n",
          ("tests/test_predict_gd.py",),
          "the any-cost solver's cross-entropy gradient softmaxes over samples, not classes"),
    Fault("ode_momentum_damping", "predict", "torch_ntk/predict/ode.py",
          "damping = 1.0 - momentum", "damping = momentum",
          ("tests/test_predict_gd.py",),
          "heavy-ball damping taken as μ instead of 1 − μ"),
    # --- lifting (torch.fx) ---
    Fault("fx_leaky_slope_dropped", "lifting", "torch_ntk/lifting/fx.py",
          '("call_function", F.leaky_relu): _one(nn.LeakyReLU, "negative_slope"),',
          '("call_function", F.leaky_relu): _one(nn.LeakyReLU),',
          ("tests/test_fx_lift.py",),
          "F.leaky_relu(x, s) under fx lifts with the default slope, not s"),
    # --- tracker ---
    Fault("drift_over_current_norm", "tracker", "torch_ntk/tracking/records.py",
          '"drift": torch.linalg.matrix_norm(k - ref) / ref_norm,',
          '"drift": torch.linalg.matrix_norm(k - ref) / k_norm,',
          ("tests/test_tracking.py",),
          "relative drift divided by ‖Θ_t‖ instead of ‖Θ_ref‖"),
    # --- Monte Carlo ---
    Fault("stderr_biased", "monte carlo", "torch_ntk/monte_carlo/samples.py",
          "return (self.m2 / ((self.n - 1) * self.n)).sqrt_()",
          "return (self.m2 / (self.n * self.n)).sqrt_()",
          ("tests/test_monte_carlo.py",),
          "standard error with 1/n instead of 1/(n − 1) (biased variance)"),
    # --- distributed ---
    Fault("mirror_tiles_skipped", "distributed", "torch_ntk/distributed/kernel.py",
          "            if symmetric and a != c:\n                data[c:d, a:b] = k.T\n",
          "            if False:\n                data[c:d, a:b] = k.T\n",
          ("tests/test_distributed.py", "-k", "single_process or two_ranks"),
          "symmetric tiled kernels do not mirror the upper tiles"),
    # --- CLI ---
    Fault("cli_default_bias_std", "cli", "torch_ntk/cli/kernel.py",
          "args.bias_std = 0.1 if args.bias_std is None else args.bias_std",
          "args.bias_std = 0.0 if args.bias_std is None else args.bias_std",
          ("tests/test_cli.py", "-k", "kernel"),
          "the CLI's default --bias-std 0.1 silently becomes 0"),
    # --- C++ (rebuild) ---
    Fault("cpp_relu_family_cross_term", "analytic", "csrc/math/activations.h",
          "e_dphi = (sq * (Constants<T>::pi - theta) + ab2 * theta) * Constants<T>::inv_two_pi;",
          "e_dphi = (sq * (Constants<T>::pi - theta) - ab2 * theta) * Constants<T>::inv_two_pi;",
          ("tests/test_independent.py", "-k", "recursion or parametrization"),
          "sign of the 2ab θ term of E[φ′φ′] for the ReLU family (leaky, abs, identity)"),
    Fault("cpp_ntk_bias_dropped", "analytic", "csrc/math/recursion.h",
          "theta = theta * (layer.weight_var * e_dphi) + layer.ntk_weight * e_phi + layer.ntk_bias;",
          "theta = theta * (layer.weight_var * e_dphi) + layer.ntk_weight * e_phi;",
          ("tests/test_independent.py", "-k", "recursion"),
          "the hidden layers' bias term c_b left out of Θ^{l+1}"),
    Fault("cpp_quadrature_scale", "analytic", "csrc/math/quadrature.h",
          "e_dphi = acc_d * Constants<T>::inv_pi;",
          "e_dphi = acc_d * Constants<T>::inv_pi * T(1.00001);",
          ("tests/test_independent.py", "-k", "recursion"),
          "the quadrature's E[φ′φ′] off by 1e-5 relative"),
    Fault("cpp_structured_diagonal_bias", "empirical", "csrc/math/structured_tile.h",
          "int64_t d_stride, int64_t nj, int64_t n_out, T cw, T cb,\n"
          "                                     bool first) {\n"
          "  for (int64_t j = 0; j < nj; ++j) {\n"
          "    const T scale = gram_a != nullptr ? cw * gram_a[j] + cb : cb;",
          "int64_t d_stride, int64_t nj, int64_t n_out, T cw, T cb,\n"
          "                                     bool first) {\n"
          "  for (int64_t j = 0; j < nj; ++j) {\n"
          "    const T scale = gram_a != nullptr ? cw * gram_a[j] : cb;",
          ("tests/test_empirical.py", "-k", "oracle"),
          "mode 'diagonal' of the structured op drops c_b where a layer has inputs"),
]


def _copy_tree(dest: str) -> None:
    """The working tree (tracked and untracked, not ignored) plus the built extension."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    files += [os.path.join("torch_ntk", f) for f in os.listdir(os.path.join(ROOT, "torch_ntk"))
              if f.startswith("_C") and f.endswith(".so")]
    for rel in files:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def _apply(tree: str, fault: Fault) -> str:
    """Put the fault into the copy; returns the file's original text (for _restore)."""
    path = os.path.join(tree, fault.path)
    with open(path) as f:
        text = f.read()
    if text.count(fault.old) != 1:
        raise SystemExit(f"fault {fault.name}: the text to replace occurs "
                         f"{text.count(fault.old)} times in {fault.path} (needs exactly 1)")
    with open(path, "w") as f:
        f.write(text.replace(fault.old, fault.new))
    return text


def _restore(tree: str, fault: Fault, text: str) -> None:
    with open(os.path.join(tree, fault.path), "w") as f:
        f.write(text)  # a new mtime: ninja rebuilds it before the next C++ fault


def _build(tree: str, log) -> tuple[bool, float]:
    start = time.perf_counter()
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tree, env=env, capture_output=True, text=True)
    log.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    return proc.returncode == 0, time.perf_counter() - start


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def _run_tests(tree: str, fault: Fault, timeout: float, log) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE",
           *fault.tests]
    env = dict(os.environ, PYTHONPATH=tree)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "killed_by": None, "seconds": timeout}
    log.write(proc.stdout[-6000:] + proc.stderr[-2000:])
    match = _FAILED.search(proc.stdout)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode == 0:
        return {"status": "survived", "killed_by": None, "seconds": seconds}
    if match:
        return {"status": "killed", "killed_by": match.group(1), "seconds": seconds}
    return {"status": f"pytest exit {proc.returncode}", "killed_by": None, "seconds": seconds}


def run(faults, timeout: float, log_path: str) -> dict:
    python = [f for f in faults if not f.cpp]
    cpp = [f for f in faults if f.cpp]
    results = []
    with tempfile.TemporaryDirectory(prefix="ntk-mutants-") as tree, open(log_path, "w") as log:
        _copy_tree(tree)
        for fault in python + cpp:
            log.write(f"\n===== {fault.name}\n")
            original = _apply(tree, fault)
            row = {**asdict(fault), "language": "C++" if fault.cpp else "Python"}
            try:
                if fault.cpp:
                    ok, seconds = _build(tree, log)
                    row["build_s"] = round(seconds, 1)
                    if not ok:
                        row.update(status="build failed", killed_by=None)
                        results.append(row)
                        continue
                row.update(_run_tests(tree, fault, timeout, log))
            finally:
                _restore(tree, fault, original)
            results.append(row)
            print(f"{fault.name:32s} {row['status']:10s} {row.get('killed_by') or ''}",
                  flush=True)
    return {
        "command": "python scripts/mutation_check.py " + " ".join(sys.argv[1:]),
        "load_avg": os.getloadavg(),
        "faults": len(results),
        "killed": sum(r["status"] == "killed" for r in results),
        "results": results,
    }


def render_mutation(payload: dict) -> str:
    """The markdown table: fault → the test that killed it."""
    lines = [
        "| fault | area | language | mistake | killed by | s | run (commit, date) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in payload["results"]:
        killer = f"`{r['killed_by']}`" if r.get("killed_by") else f"**{r['status']}**"
        run_at = f"{r['commit']}, {r['date']}" if r.get("commit") else "before the commit was recorded"
        lines.append(f"| {r['name']} | {r['area']} | {r['language']} | {r['what']} | {killer} "
                     f"| {r.get('seconds', '')} | {run_at} |")
    lines.append("")
    listed = len(FAULTS)
    lines.append(f"{payload['killed']} of {payload['faults']} faults killed"
                 + ("." if payload["faults"] == listed
                    else f"; {listed - payload['faults']} listed faults not run yet."))
    return "\n".join(lines)


def _commit() -> str:
    """The checked-out commit, with "+dirty" when the working tree has changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def _merged(payload: dict, previous_path) -> dict:
    """A run of some faults (``--only``) merged into the previous JSON: each fault keeps its
    latest row (with its own commit and date); faults no longer listed are dropped."""
    rows = {}
    if previous_path and os.path.exists(previous_path):
        with open(previous_path) as f:
            rows = {r["name"]: r for r in json.load(f).get("results", [])}
    rows.update({r["name"]: r for r in payload["results"]})
    results = [rows[f.name] for f in FAULTS if f.name in rows]
    return {**payload, "faults": len(results),
            "killed": sum(r["status"] == "killed" for r in results), "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="fault names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results",
                                                       "mutation_check.json"))
    parser.add_argument("--md", default=None, help="write the table here ('-': stdout)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per fault's tests")
    parser.add_argument("--log", default=os.path.join(tempfile.gettempdir(), "mutation_check.log"))
    args = parser.parse_args(argv)
    if args.list:
        for f in FAULTS:
            print(f"{f.name:32s} {f.area:12s} {f.path}: {f.what}")
        return 0
    names = {f.name for f in FAULTS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"argument --only: unknown faults {unknown}; see --list")
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    for f in faults:  # every fault must apply to the current source before anything runs
        with open(os.path.join(ROOT, f.path)) as fh:
            if fh.read().count(f.old) != 1:
                parser.error(f"fault {f.name}: its text no longer occurs once in {f.path}")
    payload = run(faults, args.timeout, args.log)
    commit = _commit()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for row in payload["results"]:
        row.update(commit=commit, date=stamp, load_avg=payload["load_avg"])
    payload = _merged(payload, args.json if args.only else None)
    payload["machine"] = {"cpus": os.cpu_count()}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, args.json)
    table = render_mutation(payload)
    if args.md == "-":
        print(table)
    elif args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    return 0 if payload["killed"] == payload["faults"] else 1


if __name__ == "__main__":
    sys.exit(main())
