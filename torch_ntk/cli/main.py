"""The ``torch-ntk`` command (also ``python -m torch_ntk``).

    torch-ntk demo [--quick] [--out torch_ntk_demo]
        NTK theory at work in about a minute on a CPU: empirical NTKs of MLPs of growing
        width converge to Θ∞, training barely moves them, and trained networks match
        kernel regression. Prints a table; writes PNG figures and demo.json.
    torch-ntk reproduce figure1|figure2|figure3|cntk-digits|all [--quick] [--set KEY=VALUE ...]
        The experiments of Jacot et al. (2018), §6, with the paper's settings by default.
    torch-ntk kernel INPUT --widths 784 512 512 10 [--kind ntk|nngp|empirical] -o K.npy
        An analytic (NNGP, NTK) or empirical NTK of an MLP (or of a CNN on image arrays,
        --conv) on inputs from .npy/.csv/.pt, saved as .npy (written through a memory map,
        for large N) or .pt; --distributed (or torchrun -m torch_ntk kernel ...) computes
        it in tiles over the ranks, resumable (torch_ntk.kernel_command).
    torch-ntk quickstart
        The infinite-width kernels against averages of random networks, printed.
    torch-ntk bench [analytic|empirical|tracker|cnn|cnn_structured|graph|all] [--device cpu|cuda] [--quick] [--out DIR]
        The benchmark suites (torch_ntk.bench): the fused ops against their baselines in
        the same process; writes DIR/<suite>_<device>.json and prints markdown tables.

Exit status: 0 on success, 2 for bad arguments (the message names the argument), 1 when
a run fails (e.g. an optional dependency is missing), 130 when interrupted by Ctrl-C,
128 + the signal's number when stopped by SIGTERM (143) or SIGHUP (129), which are handled
like Ctrl-C. Outputs are written atomically: an interrupted or failed command leaves no
partial file — except a tiled ``kernel`` run's ``<out>.partial`` and manifests, kept on
purpose so that rerunning the same command resumes it (the message says so). An existing
output file is refused without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

__all__ = ["main", "build_parser", "parse_bytes"]

PROG = "torch-ntk"


class CommandError(Exception):
    """A failure while running a command (exit status 1), as opposed to a usage error."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt so that
    the same clean-up runs (temporary files removed, a tiled run checkpointed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main
    thread (only where their action is the default one: a SIGHUP ignored by nohup stays
    ignored, an application's own handler stays); a second such signal during the
    clean-up is ignored. The previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return  # already stopping: let the clean-up finish
        fired.append(signum)
        raise Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
        except (OSError, ValueError):
            pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


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
    from .. import __version__
    from . import quickstart
    from ..bench import HELP as BENCH_HELP, SUITES as BENCH_SUITES
    from ..experiments import REPRODUCE_HELP, demo as demo_module
    from .kernel import add_kernel_command

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

    from ..experiments import EXPERIMENTS
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

    add_kernel_command(sub, [common], {"positive_int": _positive_int,
                                       "non_negative_int": _non_negative_int,
                                       "non_negative_float": _non_negative_float}, parse_bytes)

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
                       choices=[*BENCH_SUITES, "all"],
                       help=f"{', '.join(BENCH_SUITES)} or all (default all)")
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
    from ..experiments.common import config_with

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
    from .._utils.runtime import resolve_device

    try:
        return resolve_device(device)
    except ValueError as error:
        parser.error(f"argument --device: {error}")


def _cmd_reproduce(parser, args) -> int:
    from ..experiments import FIGURES, load

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
    from ..experiments import demo

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

    from ..bench import SUITES, run_suites

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available on this machine")
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if args.cases is not None:
        if "empirical" not in suites:
            parser.error("argument --cases: only applies to the empirical suite")
        from ..bench.empirical import CASES, select_cases

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


# -------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``torch-ntk`` command with ``argv`` (default ``sys.argv[1:]``); return the
    exit status (argparse usage errors raise SystemExit(2) with the message on stderr)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with signals_as_interrupts():
            return args.handler(args.subparser, args)
    except KeyboardInterrupt as error:
        note = getattr(error, "note", None) or "no partial output was written"
        if isinstance(error, Terminated):
            name = signal.Signals(error.signum).name
            print(f"{PROG} {args.command}: stopped by {name}; {note}", file=sys.stderr)
            return 128 + error.signum
        print(f"{PROG} {args.command}: interrupted; {note}", file=sys.stderr)
        return 130
    except (CommandError, ImportError, FloatingPointError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
