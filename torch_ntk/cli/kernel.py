"""``torch-ntk kernel``: a kernel of an MLP or CNN on inputs from a file, saved as .npy/.pt.

One command for every size: one process fills the output in blocks; ``--distributed``
(or a launch under ``torchrun``, or an output larger than ``--memory-budget``) computes
it tile by tile into a memory-mapped .npy that resumes after a crash
(:func:`torch_ntk.distributed.tiled_kernel`), over all the ranks of the process group.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from .networks import empirical_model, lifted_spec

__all__ = ["KERNEL_DOC", "add_kernel_command", "run_kernel"]

OUTPUT_SUFFIXES = (".npy", ".pt")

KERNEL_DOC = """\
Compute a kernel of a network on the rows (or images) of INPUT (and --x2) and save it.
The same flags give the same kernel as Python's NTK(model).limit / empirical_ntk on the
model they describe.

The network, safest first:
  --widths n0 n1 ... nL            an MLP n0 → n1 → … → nL
  --conv C1 ... Ck --widths ... nL a CNN on images [N, C, H, W] or [N, C, L] in a .npy
                                   (or .pt): k conv layers (--kernel-size, --stride,
                                   --padding), each followed by --activation, then the
                                   --readout (gap or flatten) and dense layers --widths
  --state-dict FILE                the weights of that network (empirical), loaded with
                                   torch.load(weights_only=True): tensors only
  --model FILE                     a whole nn.Module saved with torch.save; UNPICKLES the
                                   file (runs any code it holds): only files you trust

  --kind ntk | nngp   the infinite-width Θ∞ or Σ, [N1, N2] (one fused op; the hidden
                      widths and channels do not matter in NTK parametrization)
  --kind empirical    the finite-width NTK of one network (random with --seed, or loaded)

Output: .npy (written through a memory map, for large N) or .pt. Larger than
--memory-budget, or with --distributed, or under torchrun, the kernel ([N1, N2], trace
mode) is computed in tiles of --tile-size into <out>.partial with manifests; rerunning
the same command after a crash resumes it; the file appears when complete:

  torch-ntk kernel x.npy --widths 784 512 1 -o K.npy --distributed
  torchrun --nproc_per_node=4 -m torch_ntk kernel x.npy --widths 784 512 1 -o K.npy

A resume trusts only what belongs to this very computation (the inputs, network,
settings and torch_ntk version recorded in the manifest, and the finished file's recorded
size and checksum); a result or partial run of another one, or a result changed since,
is refused with the reason. Every output is written atomically: an existing -o file is
refused without --overwrite; Ctrl-C, SIGTERM and SIGHUP remove the temporary file (exit
status 130, 143, 129), and a tiled run keeps <out>.partial with its finished tiles
recorded, to resume with the same command.

Inputs: .npy, .npz (one array), .csv (comma-separated numbers; a non-numeric first line is
a header; pandas' row index column is refused until --csv-index-col says what it is), .pt
(a tensor, loaded with weights_only=True).
"""


def _widths(text: str) -> list[int]:
    """'784' or '784,512,1' (argparse type; each entry a positive integer)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def add_kernel_command(sub, parents, number_types: dict, parse_bytes) -> argparse.ArgumentParser:
    """Add the ``kernel`` subcommand to ``sub`` (``number_types``: positive_int,
    non_negative_int, non_negative_float argparse types of the CLI)."""
    pos, nonneg, nonneg_f = (number_types[k] for k in ("positive_int", "non_negative_int",
                                                        "non_negative_float"))
    k = sub.add_parser(
        "kernel", parents=parents, help="compute and save a kernel of an MLP or CNN on inputs "
        "from a file (tiled over torchrun ranks with --distributed)",
        description=KERNEL_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("input", help="x1: [N1, n0] in a .npy, .npz (one array), .csv or .pt file; "
                                 "images [N1, C, H, W] or [N1, C, L] (.npy/.npz/.pt) for a CNN")
    k.add_argument("--x2", default=None, help="x2 in the same formats; default x1")
    k.add_argument("--csv-header", choices=["auto", "yes", "no"], default="auto",
                   help="a .csv input's first line: yes, a header (skipped); no, data; auto "
                        "(default): a header when not all numbers (a first line 0,1,…,n-1, "
                        "pandas' default column names, is refused: say which)")
    k.add_argument("--csv-index-col", choices=["auto", "yes", "no"], default="auto",
                   help="a .csv input's first column: yes, a row index (dropped), as pandas' "
                        "df.to_csv writes by default; no, a feature; auto (default): refuse "
                        "a first column 0,1,…,N-1 or under an empty header field (say which)")
    net = k.add_argument_group("network (architecture flags and --state-dict first; --model "
                               "only for trusted files)")
    net.add_argument("--widths", type=_widths, nargs="+", default=None,
                     help="MLP widths n0 n1 ... nL (n0 = the input columns; '784,512,1' works "
                          "too); with --conv, the dense layers after the readout")
    net.add_argument("--conv", type=pos, nargs="+", default=None, metavar="C",
                     help="a CNN: the output channels of its conv layers (the input channels "
                          "come from the images)")
    net.add_argument("--kernel-size", type=pos, default=3, help="conv kernel size (default 3)")
    net.add_argument("--stride", type=pos, default=1, help="conv stride (default 1)")
    net.add_argument("--padding", choices=["same", "valid"], default="same",
                     help="conv padding (default same; same needs --stride 1)")
    net.add_argument("--readout", choices=["gap", "flatten"], default="gap",
                     help="after the convs: global average pooling (CNTK-GAP, default) or "
                          "flatten")
    net.add_argument("--activation", default="relu",
                     help="a registered activation, optionally NAME:PARAM "
                          "(e.g. leaky_relu:0.2); default relu")
    net.add_argument("--weight-std", type=nonneg_f, default=None,
                     help="σ_w of ntk/standard layers (default 1)")
    net.add_argument("--bias-std", type=nonneg_f, default=None,
                     help="σ_b of ntk/standard layers (default 0.1)")
    net.add_argument("--parametrization", choices=["ntk", "standard", "torch"], default="ntk",
                     help="ntk: NTKLinear/NTKConv layers (default); standard: their "
                          "parametrization='standard'; torch: plain nn.Linear/nn.Conv layers")
    net.add_argument("--no-bias", dest="bias", action="store_false",
                     help="layers without bias")
    net.add_argument("--state-dict", default=None,
                     help="empirical only: a torch.save'd state_dict of the network these "
                          "flags describe, loaded with weights_only=True (tensors only; "
                          "refused if its weight scale does not fit)")
    net.add_argument("--model", default=None,
                     help="instead of the flags: an nn.Module saved whole with torch.save. "
                          "Loading UNPICKLES it (weights_only=False), which runs any code the "
                          "file holds: give only files you trust; prefer the flags and "
                          "--state-dict")
    net.add_argument("--seed", type=nonneg, default=0,
                     help="empirical only: seed of the random initialization (default 0)")
    k.add_argument("--kind", choices=["ntk", "nngp", "empirical"], default="ntk",
                   help="ntk (Θ∞), nngp (Σ) — infinite width; empirical — the "
                        "finite-width NTK of one network (default ntk)")
    k.add_argument("--mode", choices=["trace", "full", "diagonal"], default=None,
                   help="empirical only: trace [N1, N2], the mean over the nL outputs "
                        "(default), full [N1, N2, nL, nL] or diagonal [N1, N2, nL]")
    k.add_argument("--method", choices=["auto", "structured", "hooks", "jacobian", "ntk_vp"],
                   default="auto", help="empirical only: empirical_ntk's method (default auto)")
    k.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    k.add_argument("--precision", choices=["highest", "bf16", "bf16x3"], default=None,
                   help="empirical only, with --dtype float32: Gram products on bfloat16 "
                        "operands (bf16, error ~1e-3) or three split bfloat16 products "
                        "(bf16x3, error ~1e-6); tensor cores on CUDA (default highest)")
    k.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:index] (under torchrun: cuda:LOCAL_RANK)")
    k.add_argument("--memory-budget", type=parse_bytes, default=None,
                   help="working memory to stay within, e.g. 2GB (default: half the "
                        "available memory, shared by the ranks of a host)")
    k.add_argument("--chunk-size", type=pos, default=None,
                   help="samples per block (default: sized from the memory budget)")
    k.add_argument("-o", "--output", required=True,
                   help="the file to write: .npy (memory-mapped while it is filled) or .pt; "
                        "written atomically (it appears only when complete); an existing "
                        "file is refused without --overwrite")
    k.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file (or a tiled partial run of another "
                        "computation); without it they are refused, except a finished tiled "
                        "result of this very computation, which is reported as done")
    tiled = k.add_argument_group("tiled, resumable runs (.npy, trace mode)")
    tiled.add_argument("--distributed", action="store_true",
                       help="compute in tiles over the ranks of torchrun (one process "
                            "without it), resumable: rerun the same command after a crash")
    tiled.add_argument("--tile-size", type=pos, default=2048,
                       help="rows and columns per tile (default 2048)")
    tiled.add_argument("--checkpoint-s", type=nonneg_f, default=2.0,
                       help="seconds between checkpoints (flush + manifest): a crash loses at "
                            "most this much finished work (Ctrl-C, SIGTERM and SIGHUP lose "
                            "none); 0: after every tile (default 2)")
    tiled.add_argument("--stats", default=None,
                       help="write the tiled run's statistics here (JSON, rank 0)")
    tiled.add_argument("--_stop-after-tiles", dest="stop_after_tiles", type=pos,
                       help=argparse.SUPPRESS)
    k.set_defaults(handler=run_kernel, subparser=k)
    return k


# ----------------------------------------------------------------------------- checks


def _activation(parser, text: str):
    from ..activations import REGISTRY, from_name

    name, _, param = text.partition(":")
    if name not in REGISTRY:
        parser.error(f"argument --activation: unknown activation {name!r}; registered: "
                     f"{', '.join(sorted(REGISTRY))}")
    try:
        return from_name(name, float(param) if param else None)
    except ValueError as error:
        parser.error(f"argument --activation: {error}")


def _check_flags(parser, args) -> None:
    """Usage errors that need no file (exit status 2, naming the argument)."""
    if os.path.splitext(args.output)[1].lower() not in OUTPUT_SUFFIXES:
        parser.error(f"argument -o/--output: expected a .npy or .pt file name; got {args.output!r}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        parser.error(f"argument -o/--output: the folder {out_dir!r} does not exist")
    if os.path.isdir(args.output):
        parser.error(f"argument -o/--output: {args.output!r} is a folder; expected a .npy or "
                     ".pt file name")
    csv_inputs = [p for p in (args.input, args.x2) if p and p.lower().endswith(".csv")]
    for flag, value in (("--csv-header", args.csv_header), ("--csv-index-col", args.csv_index_col)):
        if value != "auto" and not csv_inputs:
            parser.error(f"argument {flag}: only applies to .csv inputs (input and --x2 are "
                         f"{', '.join(repr(p) for p in (args.input, args.x2) if p)})")
    if args.widths is not None:
        args.widths = [w for group in args.widths for w in group]
    if args.model is not None:
        for flag, given in (("--widths", args.widths), ("--conv", args.conv),
                            ("--state-dict", args.state_dict)):
            if given is not None:
                parser.error(f"argument {flag}: not with --model (the file holds the network)")
        if not os.path.isfile(args.model):
            parser.error(f"argument --model: {args.model!r} is a folder; expected a file saved "
                         "by torch.save(model, path)" if os.path.isdir(args.model) else
                         f"argument --model: no such file: {args.model!r}")
    elif args.widths is None:
        parser.error("argument --widths: give the network: --widths n0 ... nL (MLP), "
                     "--conv C1 ... --widths ... nL (CNN) or --model FILE")
    elif args.conv is None and len(args.widths) < 2:
        parser.error("argument --widths: needs at least two widths, n0 and nL (e.g. --widths 784 10)")
    if args.conv is not None and args.padding == "same" and args.stride != 1:
        parser.error("argument --padding: 'same' needs --stride 1; use --padding valid")
    empirical = args.kind == "empirical"
    if not empirical:
        for flag, given in (("--mode", args.mode is not None),
                            ("--state-dict", args.state_dict is not None),
                            ("--precision", args.precision is not None),
                            ("--method", args.method != "auto")):
            if given:
                parser.error(f"argument {flag}: only applies to --kind empirical")
    if args.parametrization == "torch":
        for flag, given in (("--weight-std", args.weight_std), ("--bias-std", args.bias_std)):
            if given is not None:
                parser.error(f"argument {flag}: does not apply to --parametrization torch "
                             "(nn.Linear/nn.Conv layers have PyTorch's initialization)")
    else:
        args.weight_std = 1.0 if args.weight_std is None else args.weight_std
        args.bias_std = 0.1 if args.bias_std is None else args.bias_std
    args.precision = args.precision or "highest"
    if args.precision != "highest" and args.dtype != "float32":
        parser.error(f"argument --precision: {args.precision} needs --dtype float32 "
                     f"(got {args.dtype})")


# ----------------------------------------------------------------------------- running


def _load(parser, args, dtype):
    from .._utils.files import load_inputs

    dims = (2,) if args.conv is None and args.model is None else \
        ((3, 4) if args.model is None else (2, 3, 4))
    csv = dict(csv_header={"auto": None, "yes": True, "no": False}[args.csv_header],
               csv_index_col={"auto": None, "yes": True, "no": False}[args.csv_index_col])
    try:
        x1 = load_inputs(args.input, "input", dtype, dims=dims, **csv)
        x2 = load_inputs(args.x2, "--x2", dtype, dims=dims, **csv) if args.x2 is not None else None
    except ValueError as error:
        parser.error(str(error))
    if args.conv is None and args.model is None:
        for name, x in (("input", x1), ("--x2", x2)):
            if x is not None and x.shape[1] != args.widths[0]:
                parser.error(f"argument --widths: n0 = {args.widths[0]} but {name} has "
                             f"{x.shape[1]} columns (shape {list(x.shape)}); the first width "
                             "must be the input size")
    return x1, x2


def _outputs(parser, model, x1, device) -> int:
    """n_L of a --model, from one sample (a usage error when it cannot take the inputs)."""
    import torch

    from ..lifting.lift import lift
    from .._utils.validation import check_batch

    try:
        spec = lift(model)
    except ValueError:
        spec = None
    if spec is not None:  # the network's own shape check: names the expected [C, H, W]
        try:
            if spec.is_mlp:
                check_batch("argument input", "the input", x1, features=spec.input_features,
                            flatten=spec.flatten_input)
            else:
                spec.check_input("argument input", "the input", x1)
        except ValueError as error:
            parser.error(str(error))
        return spec.output_features
    try:
        with torch.no_grad():
            return max(1, model.eval()(x1[:1].to(device))[0].numel())
    except Exception as error:  # the model's own error says what it expected
        parser.error(f"argument input: the --model network cannot take inputs of shape "
                     f"{list(x1.shape)} ({type(error).__name__}: {error})")


def _want_tiles(parser, args, shape, dtype, budget) -> bool:
    import torch

    launched = "WORLD_SIZE" in os.environ
    suffix = os.path.splitext(args.output)[1].lower()
    if args.distributed or launched:
        what = "--distributed" if args.distributed else "torchrun"
        if suffix != ".npy":
            parser.error(f"argument -o/--output: {what} writes a .npy (memory-mapped, "
                         f"resumable); got {args.output!r}")
        if (args.mode or "trace") != "trace":
            parser.error(f"argument --mode: {what} computes [N1, N2] kernels (trace mode)")
        if args.precision != "highest":
            parser.error(f"argument --precision: {what} computes in the inputs' dtype")
        return True
    size = torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
    return (suffix == ".npy" and len(shape) == 2 and args.precision == "highest"
            and size > budget)


def run_kernel(parser, args) -> int:
    """The ``kernel`` command's handler (``parser`` for usage errors)."""
    import torch

    from .._utils.modes import kernel_shape
    from .._utils.runtime import default_memory_budget, resolve_device

    _check_flags(parser, args)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"argument --device: {error}")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    activation = _activation(parser, args.activation)
    x1, x2 = _load(parser, args, dtype)
    empirical = args.kind == "empirical"
    if empirical:
        model = empirical_model(parser, args, activation, x1, device, dtype)
        n_out = args.widths[-1] if args.model is None else _outputs(parser, model, x1, device)
    else:
        model = lifted_spec(parser, args, activation, x1, dtype)
        n_out = model.output_features
    n1, n2 = x1.shape[0], (x2 if x2 is not None else x1).shape[0]
    shape = kernel_shape((args.mode or "trace") if empirical else "trace", n1, n2, n_out)
    budget = args.memory_budget or default_memory_budget(device)
    x1 = x1.to(device)
    x2 = x2.to(device) if x2 is not None else None
    if _want_tiles(parser, args, shape, dtype, budget):
        return _run_tiled(parser, args, model, x1, x2, device)
    return _run_whole(parser, args, model, x1, x2, shape, dtype, device, budget)


def _run_whole(parser, args, model, x1, x2, shape, dtype, device, budget) -> int:
    import torch

    from .. import empirical_ntk
    from ..analytic.kernels import analytic_kernels_into
    from .._utils.files import atomic_npy, atomic_write

    if os.path.exists(args.output) and not args.overwrite:
        parser.error(f"argument -o/--output: {args.output!r} exists; pass --overwrite to "
                     "replace it, or choose another -o")
    t0 = time.perf_counter()
    info = {}

    def fill(out):
        if args.kind == "empirical":
            kernel, meta = empirical_ntk(model, x1, x2, mode=args.mode or "trace",
                                         method=args.method, chunk_size=args.chunk_size,
                                         memory_budget=budget, out=out,
                                         progress=None if args.progress else False,
                                         precision=args.precision, return_info=True)
            info.update(method=meta.method, blocks=meta.blocks)
            return kernel
        blocks = analytic_kernels_into(model, x1, x2, out, get=args.kind, memory_budget=budget,
                                       chunk_size=args.chunk_size,
                                       progress=None if args.progress else False)
        info.update(method="analytic (fused op)", blocks=blocks)
        return out

    try:
        if args.output.lower().endswith(".npy") and device.type == "cpu":
            atomic_npy(args.output, shape, dtype, fill)
        else:
            result = torch.empty(shape, dtype=dtype, device=device)
            fill(result)
            if args.output.lower().endswith(".npy"):
                atomic_npy(args.output, shape, dtype, lambda out: out.copy_(result))
            else:
                result = result.cpu()
                atomic_write(args.output, lambda f: torch.save(result, f), binary=True)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    _forget_tiled_result(args.output)
    print(f"wrote {args.output}: {args.kind} kernel {list(shape)} {args.dtype} "
          f"({info.get('method')}, {info.get('blocks')} block(s)) in "
          f"{time.perf_counter() - t0:.2f} s")
    return 0


def _forget_tiled_result(output: str) -> None:
    """After a plain run replaced ``output``: drop a tiled run's manifest that recorded the
    old file as finished (it describes a file that is gone; a tiled rerun would refuse it
    anyway, as its size and checksum no longer match). A partial run's manifest stays."""
    from .._utils.files import read_json

    manifest = output + ".manifest.json"
    old = read_json(manifest)
    if isinstance(old, dict) and old.get("complete") and str(old.get("format", "")).startswith(
            "torch_ntk.distributed.kernel/"):
        try:
            os.remove(manifest)
        except OSError:
            pass


def _interrupted_note(args) -> str:
    """What an interrupted tiled run leaves and how to resume it (for main's message)."""
    from ..distributed.kernel import recorded_tiles

    partial = args.output + ".partial"
    if not os.path.exists(partial):
        return "no partial output was written"
    counts = recorded_tiles(args.output)
    done = (f"{counts[0]} of {counts[1]} tiles finished and recorded" if counts else
            "no tiles recorded")
    argv = getattr(args, "argv", None)
    again = ("the same command" if argv is None or "WORLD_SIZE" in os.environ else
             "torch-ntk " + shlex.join(argv))
    return (f"{partial} and its manifests ({args.output}.manifest*.json) remain, with {done}; "
            f"to resume, rerun {again}; to discard the run, delete them")


def _run_tiled(parser, args, model, x1, x2, device) -> int:
    from ..distributed import process_group, tiled_kernel
    from ..distributed.kernel import OutputConflict
    from .._utils.files import write_json

    if not args.distributed and "WORLD_SIZE" not in os.environ:
        print(f"{args.output}: the kernel is larger than the memory budget; computing it in "
              f"tiles of {args.tile_size} (rerun the same command to resume if interrupted)",
              file=sys.stderr, flush=True)
    with process_group(device) as rank:
        try:
            stats = tiled_kernel(model, x1, x2, kind=args.kind, out=args.output,
                                 tile_size=args.tile_size, method=args.method,
                                 memory_budget=args.memory_budget, overwrite=args.overwrite,
                                 checkpoint_s=args.checkpoint_s,
                                 progress=None if args.progress else False,
                                 _stop_after_tiles=args.stop_after_tiles)
        except OutputConflict as error:
            message = str(error).replace("tiled_kernel: ", "", 1).replace(
                "overwrite=True (--overwrite)", "--overwrite")
            print(f"torch-ntk kernel (rank {rank}): error: argument -o/--output: {message}",
                  file=sys.stderr, flush=True)
            return 2
        except (ValueError, TypeError) as error:
            print(f"torch-ntk kernel (rank {rank}): error: {error}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM/SIGHUP turned into it by main
            error.note = _interrupted_note(args)  # every rank has checkpointed its tiles
            raise
        if rank == 0:
            if args.stats:
                write_json(args.stats, stats.to_dict(), indent=None)
            if stats.tiles_skipped == stats.tiles_total and not stats.tiles_computed:
                print(f"{args.output} is already this kernel: {args.kind} "
                      f"{list(stats.shape)} {args.dtype}, finished by an earlier run of this "
                      f"computation (verified against {args.output}.manifest.json: the same "
                      "inputs, network, settings and torch_ntk version, and the file it "
                      "recorded); nothing computed", flush=True)
            else:
                print(f"wrote {args.output}: {args.kind} kernel {list(stats.shape)} "
                      f"{args.dtype} (tiled, {stats.method}); {stats.tiles_computed} tiles "
                      f"computed, {stats.tiles_skipped} resumed, {stats.world_size} rank(s), "
                      f"{stats.seconds:.2f} s", flush=True)
    return 0
