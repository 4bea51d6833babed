"""The ``torch-ntk`` command (also ``python -m torch_ntk``).

    torch-ntk demo [--quick] [--out torch_ntk_demo]
        NTK theory at work in about a minute on a CPU: empirical NTKs of MLPs of growing
        width converge to Θ∞, training barely moves them, and trained networks match
        kernel regression. Prints a table; writes PNG figures and demo.json.
    torch-ntk reproduce figure1|figure2|figure3|cntk-digits|all [--quick] [--set KEY=VALUE ...]
        The experiments of Jacot et al. (2018), §6, with the paper's settings by default.
    torch-ntk kernel INPUT --widths 784 512 512 10 [--kind ntk|nngp|empirical] -o K.npy
        An analytic (NNGP, NTK) or empirical NTK of an MLP on inputs from .npy/.csv/.pt,
        saved as .npy (written through a memory map, for large N) or .pt.
    torch-ntk quickstart
        The infinite-width kernels against averages of random networks, printed.
    torch-ntk bench [analytic|empirical|tracker|cnn|all] [--device cpu|cuda] [--quick] [--out DIR]
        The benchmark suites (torch_ntk.bench): the fused ops against their baselines in
        the same process; writes DIR/<suite>_<device>.json and prints markdown tables.

Exit status: 0 on success, 2 for bad arguments (the message names the argument), 1 when
a run fails (e.g. an optional dependency is missing), 130 when interrupted. Outputs are
written atomically: an interrupted or failed command leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

__all__ = ["main", "build_parser", "parse_bytes"]

PROG = "torch-ntk"


class CommandError(Exception):
    """A failure while running a command (exit status 1), as opposed to a usage error."""


# ----------------------------------------------------------------------------- parser


def _number(cast: Callable[[str], float], expected: str, minimum_allowed: bool):
    """An argparse type: ``cast(text)`` above 0 (or ≥ 0 with ``minimum_allowed``), else
    ArgumentTypeError "expected <expected>; got <text>"."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not (value >= 0 if minimum_allowed else value > 0):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


_positive_int = _number(int, "a positive integer", False)
_non_negative_int = _number(int, "an integer ≥ 0", True)
_non_negative_float = _number(float, "a number ≥ 0", True)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'2GB', '512MiB', '1e9' → bytes (argparse type; ArgumentTypeError otherwise)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 2GB, 512MiB or 1000000; got {text!r}")
    try:
        value = float(match.group(1)) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 2GB; got {text!r}") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a positive size; got {text!r}")
    return int(value)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("run options")
    group.add_argument("--threads", type=_positive_int, default=None,
                       help="CPU threads for torch (default: torch's choice)")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="hide the progress bars (shown on stderr by default)")
    return common


def _experiment_options(default_out: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("experiment options")
    group.add_argument("--quick", action="store_true",
                       help="smaller settings: about a minute each on a laptop CPU")
    group.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    group.add_argument("--seed", type=_non_negative_int, default=0,
                       help="seed of every random draw (default 0)")
    group.add_argument("--out", default=default_out,
                       help=f"output folder for PNG figures and JSON numbers (default {default_out}/)")
    group.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="override a setting (repeatable), e.g. --set inits=4 --set "
                            "widths=500,2000; the keys are the fields of the Config "
                            "(--print-config lists them)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``torch-ntk`` command."""
    from . import __version__, quickstart
    from .bench import HELP as BENCH_HELP
    from .experiments import REPRODUCE_HELP, demo as demo_module

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Neural Tangent Kernels for PyTorch: demo, paper figures, kernels.",
        epilog="Run 'torch-ntk COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"torch-ntk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_options()

    demo = sub.add_parser(
        "demo", parents=[_experiment_options("torch_ntk_demo"), common],
        help="the NTK theory at work in about a minute (table, figures, JSON)",
        description=demo_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--widths", type=_positive_int, nargs="+", default=None,
                      help="hidden widths (default 64 256 1024 4096)")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="gradient-descent steps (default 300)")
    demo.set_defaults(handler=_cmd_demo, subparser=demo)

    from .experiments import EXPERIMENTS
    reproduce = sub.add_parser(
        "reproduce", parents=[_experiment_options("torch_ntk_figures"), common],
        help="the experiments of Jacot et al. (2018), §6 (figure1-3), and more",
        description=REPRODUCE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    reproduce.add_argument("figures", nargs="+", metavar="FIGURE",
                           choices=[*EXPERIMENTS, "all"],
                           help=f"{', '.join(EXPERIMENTS)} or all (the figures)")
    reproduce.add_argument("--print-config", action="store_true",
                           help="print the settings that would be used and exit")
    reproduce.set_defaults(handler=_cmd_reproduce, subparser=reproduce)

    kernel = sub.add_parser(
        "kernel", parents=[common], help="compute and save a kernel of an MLP on inputs from a file",
        description=_KERNEL_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    kernel.add_argument("input", help="x1: a 2-d array in a .npy, .csv or .pt file ([N1, n0])")
    kernel.add_argument("--x2", default=None, help="x2 in the same formats ([N2, n0]); default x1")
    kernel.add_argument("--widths", type=_positive_int, nargs="+", required=True,
                        help="layer widths n0 n1 ... nL of the MLP (n0 = the input columns)")
    kernel.add_argument("--activation", default="relu",
                        help="a registered activation, optionally NAME:PARAM "
                             "(e.g. leaky_relu:0.2); default relu")
    kernel.add_argument("--kind", choices=["ntk", "nngp", "empirical"], default="ntk",
                        help="ntk (Θ∞), nngp (Σ) — infinite width; empirical — the "
                             "finite-width NTK of one network (default ntk)")
    kernel.add_argument("--mode", choices=["trace", "full", "diagonal"], default=None,
                        help="empirical only: trace [N1, N2], the mean over the nL outputs "
                             "(default), full [N1, N2, nL, nL] "
                             "or diagonal [N1, N2, nL]")
    kernel.add_argument("--weight-std", type=_non_negative_float, default=None,
                        help="σ_w of ntk/standard layers (default 1)")
    kernel.add_argument("--bias-std", type=_non_negative_float, default=None,
                        help="σ_b of ntk/standard layers (default 0.1)")
    kernel.add_argument("--parametrization", choices=["ntk", "standard", "torch"], default="ntk",
                        help="ntk: NTKLinear layers (default); standard: NTKLinear(..., "
                             "parametrization='standard'); torch: plain nn.Linear layers")
    kernel.add_argument("--no-bias", dest="bias", action="store_false",
                        help="dense layers without bias")
    kernel.add_argument("--state-dict", default=None,
                        help="empirical only: a torch.save'd state_dict of the model these "
                             "flags describe (refused if its weight scale does not fit)")
    kernel.add_argument("--seed", type=_non_negative_int, default=0,
                        help="empirical only: seed of the random initialization (default 0)")
    kernel.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    kernel.add_argument("--precision", choices=["highest", "bf16", "bf16x3"], default=None,
                        help="empirical only, with --dtype float32: Gram products on bfloat16 "
                             "operands (bf16, error ~1e-3) or three split bfloat16 products "
                             "(bf16x3, error ~1e-6); tensor cores on CUDA (default highest)")
    kernel.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    kernel.add_argument("--memory-budget", type=parse_bytes, default=None,
                        help="working memory to stay within, e.g. 2GB (default: half the "
                             "available memory)")
    kernel.add_argument("--chunk-size", type=_positive_int, default=None,
                        help="samples per block (default: sized from the memory budget)")
    kernel.add_argument("-o", "--output", required=True,
                        help="the file to write: .npy (memory-mapped while it is filled) or .pt")
    kernel.set_defaults(handler=_cmd_kernel, subparser=kernel)

    quick = sub.add_parser("quickstart", parents=[common],
                           help="print infinite-width kernels against random networks",
                           description=quickstart.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    quickstart.add_arguments(quick)
    quick.set_defaults(handler=_cmd_quickstart, subparser=quick)

    bench = sub.add_parser(
        "bench", parents=[common], help="run the benchmark suites (JSON and markdown tables)",
        description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("suite", nargs="?", default="all", metavar="SUITE",
                       choices=["analytic", "empirical", "tracker", "cnn", "all"],
                       help="analytic, empirical, tracker, cnn or all (default all)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cpu (default) or cuda")
    bench.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    bench.add_argument("--out", default="torch_ntk_bench",
                       help="output folder for the JSON files (default torch_ntk_bench/)")
    bench.add_argument("--repeats", type=_positive_int, default=None,
                       help="timed repeats per measurement (default: each suite's own)")
    bench.add_argument("--compile-backend", default="inductor",
                       help="torch.compile backend of the compiled baselines (default inductor)")
    bench.add_argument("--cases", default=None,
                       help="empirical only: comma-separated case names (or substrings) to run")
    bench.set_defaults(handler=_cmd_bench, subparser=bench)
    return parser


_KERNEL_DOC = """\
Compute a kernel of the MLP  n0 → n1 → … → nL  (NTK parametrization unless
--parametrization standard, or torch for plain nn.Linear layers) on the rows of INPUT
(and --x2) and save it. The same flags give the same kernel as Python's
NTK(model).limit / empirical_ntk on the model they describe.

  --kind ntk | nngp   the infinite-width Θ∞ or Σ, [N1, N2] (one fused op; the hidden
                      widths do not matter in NTK parametrization, they scale the NTK
                      in the standard and torch ones)
  --kind empirical    the finite-width NTK of one network (random with --seed, or
                      loaded with --state-dict), computed block by block within
                      --memory-budget without materializing a Jacobian

A .npy output is written through a memory map of a temporary file that is renamed when
complete, so N×N kernels larger than memory work and an interrupted run leaves nothing.
"""


# ---------------------------------------------------------------------------- commands


def _overrides(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"argument --set: expected KEY=VALUE; got {item!r}")
        values[key.strip()] = value.strip()
    return values


def _config(parser, module, args, overrides: dict[str, Any], strict: bool):
    """The Config of ``module`` for these arguments (usage errors exit with status 2)."""
    from .experiments.common import config_with

    base = module.Config()
    fields = set(base.__dataclass_fields__)
    settings: dict[str, Any] = dict(module.QUICK) if args.quick else {}
    settings.update(device=args.device, seed=args.seed)
    for key, value in overrides.items():
        if key in fields:
            settings[key] = value
        elif strict:
            parser.error(f"argument --set: unknown setting {key!r} for {module.NAME}; valid "
                         f"settings: {', '.join(sorted(fields))}")
    try:
        return config_with(base, settings)
    except (ValueError, TypeError) as error:
        parser.error(f"argument --set: {error}")


def _check_device(parser, device: str):
    """The torch.device named by --device (usage error when there is none such)."""
    from .runtime import resolve_device

    try:
        return resolve_device(device)
    except ValueError as error:
        parser.error(f"argument --device: {error}")


def _cmd_reproduce(parser, args) -> int:
    from .experiments import FIGURES, load

    names = list(FIGURES) if "all" in args.figures else list(dict.fromkeys(args.figures))
    overrides = _overrides(parser, args.overrides)
    modules = [load(name) for name in names]
    for key in overrides:
        if not any(key in m.Config.__dataclass_fields__ for m in modules):
            valid = sorted(set().union(*(m.Config.__dataclass_fields__ for m in modules)))
            parser.error(f"argument --set: unknown setting {key!r} for {', '.join(names)}; "
                         f"valid settings: {', '.join(valid)}")
    configs = [_config(parser, m, args, overrides, strict=len(modules) == 1) for m in modules]
    _check_device(parser, args.device)
    if args.print_config:
        for m, c in zip(modules, configs):
            print(f"{m.NAME}: {c}")
        return 0
    missing = {m.NAME: m.missing_requirements() for m in modules
               if hasattr(m, "missing_requirements")}
    missing = {name: hint for name, hint in missing.items() if hint}
    if missing:
        others = [name for name in names if name not in missing]
        raise CommandError("; ".join(missing.values()) + (
            f". The other figures: {PROG} reproduce {' '.join(others)}" if others else ""))
    for module, config in zip(modules, configs):
        print(f"== {module.NAME}: {_settings_line(config)}", flush=True)
        t0 = time.perf_counter()
        payload = module.run(config, out=args.out, progress=args.progress)
        for line in module.report(payload):
            print(line)
        files = ", ".join(os.path.join(args.out, f) for f in payload.get("files", []))
        print(f"-- {module.NAME} done in {time.perf_counter() - t0:.1f} s; wrote {files}\n", flush=True)
    return 0


def _settings_line(config) -> str:
    items = []
    for key, value in vars(config).items():
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        items.append(f"{key}={value}")
    return " ".join(items)


def _cmd_demo(parser, args) -> int:
    from .experiments import demo

    overrides = _overrides(parser, args.overrides)
    if args.widths is not None:
        overrides["widths"] = tuple(args.widths)
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = _config(parser, demo, args, overrides, strict=True)
    _check_device(parser, args.device)
    t0 = time.perf_counter()
    payload = demo.run(config, out=args.out, progress=args.progress,
                       echo=lambda line: print(line, flush=True))
    files = ", ".join(os.path.join(args.out, f) for f in payload.get("files", []))
    print(f"done in {time.perf_counter() - t0:.1f} s; wrote {files}")
    return 0


def _cmd_quickstart(parser, args) -> int:
    from . import quickstart

    quickstart.run(args)
    return 0


# ------------------------------------------------------------------------------- bench


def _cmd_bench(parser, args) -> int:
    import torch

    from .bench import SUITES, run_suites

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available on this machine")
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if args.cases is not None:
        if "empirical" not in suites:
            parser.error("argument --cases: only applies to the empirical suite")
        from .bench.empirical import CASES, select_cases

        cases = CASES[(args.device, args.quick)]
        if not select_cases(cases, args.cases):
            parser.error(f"argument --cases: no case matches {args.cases!r}; the cases are "
                         f"{', '.join(c['name'] for c in cases)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"argument --out: {args.out!r} exists and is not a folder")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: cannot create the folder {args.out!r}: {error}")
    failed = run_suites(suites, args.device, out=args.out, quick=args.quick,
                        repeats=args.repeats, compile_backend=args.compile_backend,
                        cases=args.cases, prog=f"{PROG} bench")
    if failed:
        raise CommandError(f"suite(s) failed: {', '.join(failed)} (tracebacks above)")
    return 0


# ------------------------------------------------------------------------------ kernel

OUTPUT_SUFFIXES = (".npy", ".pt")


def _activation(parser, text: str):
    from .activations import REGISTRY, from_name

    name, _, param = text.partition(":")
    if name not in REGISTRY:
        parser.error(f"argument --activation: unknown activation {name!r}; registered: "
                     f"{', '.join(sorted(REGISTRY))}")
    try:
        return from_name(name, float(param) if param else None)
    except ValueError as error:
        parser.error(f"argument --activation: {error}")


def _cmd_kernel(parser, args) -> int:
    import torch

    from . import empirical_ntk
    from .analytic import analytic_kernels_into
    from .arch import lift, mlp_spec
    from .files import atomic_npy, atomic_write, load_inputs
    from .modes import kernel_shape
    from .runtime import default_memory_budget

    out_suffix = os.path.splitext(args.output)[1].lower()
    if out_suffix not in OUTPUT_SUFFIXES:
        parser.error(f"argument -o/--output: expected a .npy or .pt file name; got {args.output!r}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"argument -o/--output: the folder {out_dir!r} does not exist")
    if len(args.widths) < 2:
        parser.error("argument --widths: needs at least two widths, n0 and nL (e.g. --widths 784 10)")
    empirical = args.kind == "empirical"
    if not empirical:
        for flag, given in (("--mode", args.mode is not None),
                            ("--state-dict", args.state_dict is not None),
                            ("--precision", args.precision is not None)):
            if given:
                parser.error(f"argument {flag}: only applies to --kind empirical")
    if args.parametrization == "torch":
        for flag, given in (("--weight-std", args.weight_std), ("--bias-std", args.bias_std)):
            if given is not None:
                parser.error(f"argument {flag}: does not apply to --parametrization torch "
                             "(nn.Linear layers have PyTorch's initialization)")
    else:
        args.weight_std = 1.0 if args.weight_std is None else args.weight_std
        args.bias_std = 0.1 if args.bias_std is None else args.bias_std
    precision = args.precision or "highest"
    if precision != "highest" and args.dtype != "float32":
        parser.error(f"argument --precision: {precision} needs --dtype float32 (got {args.dtype})")
    device = _check_device(parser, args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    activation = _activation(parser, args.activation)
    try:
        x1 = load_inputs(args.input, "input", dtype)
        x2 = load_inputs(args.x2, "--x2", dtype) if args.x2 is not None else None
    except ValueError as error:
        parser.error(str(error))
    for name, x in (("input", x1), ("--x2", x2)):
        if x is not None and x.shape[1] != args.widths[0]:
            parser.error(f"argument --widths: n0 = {args.widths[0]} but {name} has {x.shape[1]} "
                         f"columns (shape {list(x.shape)}); the first width must be the input size")
    n1, n2 = x1.shape[0], (x2 if x2 is not None else x1).shape[0]
    n_out = args.widths[-1]
    mode = args.mode or "trace"
    shape = kernel_shape(mode if empirical else "trace", n1, n2, n_out)
    x1 = x1.to(device)
    x2 = x2.to(device) if x2 is not None else None
    budget = args.memory_budget or default_memory_budget(device)
    t0 = time.perf_counter()
    info = {}

    if empirical:
        model = _model(parser, args, activation, device, dtype)

        def fill(out):
            kernel, meta = empirical_ntk(model, x1, x2, mode=mode, chunk_size=args.chunk_size,
                                         memory_budget=budget, out=out,
                                         progress=None if args.progress else False,
                                         precision=precision, return_info=True)
            info.update(method=meta.method, blocks=meta.blocks)
            return kernel
    else:
        if args.parametrization == "torch":
            spec = lift(_build_model(args, activation, "meta", dtype))
        else:
            spec = mlp_spec(args.widths, activation, weight_std=args.weight_std,
                            bias_std=args.bias_std, parametrization=args.parametrization,
                            bias=args.bias)

        def fill(out):
            blocks = analytic_kernels_into(spec, x1, x2, out, get=args.kind, memory_budget=budget,
                                           chunk_size=args.chunk_size,
                                           progress=None if args.progress else False)
            info.update(method="analytic (fused op)", blocks=blocks)
            return out

    try:
        if out_suffix == ".npy" and device.type == "cpu":
            atomic_npy(args.output, shape, dtype, fill)
        else:
            result = torch.empty(shape, dtype=dtype, device=device)
            fill(result)
            if out_suffix == ".npy":
                atomic_npy(args.output, shape, dtype, lambda out: out.copy_(result))
            else:
                result = result.cpu()
                atomic_write(args.output, lambda f: torch.save(result, f), binary=True)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    seconds = time.perf_counter() - t0
    print(f"wrote {args.output}: {args.kind} kernel {list(shape)} {args.dtype} "
          f"({info.get('method')}, {info.get('blocks')} block(s)) in {seconds:.2f} s")
    return 0


def _build_model(args, activation, device, dtype):
    from .nn import linear_mlp, ntk_mlp

    if args.parametrization == "torch":
        return linear_mlp(args.widths, activation, bias=args.bias, device=device, dtype=dtype)
    return ntk_mlp(args.widths, activation, weight_std=args.weight_std, bias_std=args.bias_std,
                   parametrization=args.parametrization, bias=args.bias, device=device,
                   dtype=dtype)


def _model(parser, args, activation, device, dtype):
    import torch

    from .nn import weight_scale_ratio

    torch.manual_seed(args.seed)
    model = _build_model(args, activation, device, dtype)
    if args.state_dict is not None:
        if not os.path.isfile(args.state_dict):
            parser.error(f"argument --state-dict: no such file: {args.state_dict!r}")
        try:
            state = torch.load(args.state_dict, map_location=device, weights_only=True)
            model.load_state_dict(state)
        except Exception as error:  # a wrong file or architecture
            parser.error(f"argument --state-dict: cannot load {args.state_dict!r} into "
                         f"the {args.parametrization} MLP {args.widths} ({activation.name}): "
                         f"{error}")
        model.to(dtype)
        ratio = weight_scale_ratio(model)
        if not 1 / 3 <= ratio <= 3:
            parser.error(
                f"argument --state-dict: its weights have {ratio:.2g}× the initial scale of "
                f"--parametrization {args.parametrization} layers, so they belong to another "
                "parametrization: use --parametrization torch for nn.Sequential(nn.Linear, "
                "...) or standard for NTKLinear(parametrization='standard')")
    return model


# -------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``torch-ntk`` command with ``argv`` (default ``sys.argv[1:]``); return the
    exit status (argparse usage errors raise SystemExit(2) with the message on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.handler(args.subparser, args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except (CommandError, ImportError, FloatingPointError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
