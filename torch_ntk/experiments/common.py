"""Machinery shared by the experiments: configs, seeds, devices, training, outputs.

Every experiment is a frozen dataclass ``Config`` (the paper's settings as defaults, a
``QUICK`` dict of smaller ones) and a ``run(config, out=None, progress=False)`` that
returns a JSON-ready dict and, when ``out`` is a folder, writes ``<name>.json`` and
``<name>.png`` into it. Files are written atomically (:mod:`torch_ntk._utils.files`), and only
once the run has finished, so an interrupted run leaves the previous files (or none),
never half-written ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
import typing
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Sized, Union

import torch
from torch import Tensor, nn

from .._utils import runtime
from .._utils.files import atomic_write, jsonable, write_json
from .._utils.runtime import cpu_info, seeded

__all__ = [
    "DTYPES",
    "atomic_write",
    "circle",
    "config_with",
    "derive_seed",
    "environment",
    "loglog_slope",
    "new_figure",
    "resolve_device",
    "save_figure",
    "seeded",
    "train_gd",
    "with_progress",
    "write_json",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------- configs


def _parse_value(name: str, hint: Any, text: str) -> Any:
    """Convert ``text`` to the type ``hint`` of config field ``name`` (ValueError if not)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        if text.strip().lower() in ("none", "auto", ""):
            return None
        return _parse_value(name, inner[0], text)
    if origin is tuple:
        item = args[0]
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        if not parts:
            raise ValueError(f"{name} needs at least one value")
        return tuple(_parse_value(name, item, p) for p in parts)
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false; got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer; got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number; got {text!r}") from None
    return text


def config_with(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of dataclass ``config`` with ``overrides`` (values or strings to parse).

    Raises ValueError naming an unknown field (and listing the valid ones) or a value
    that does not parse; the config's own ``__post_init__`` checks the result.
    """
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    values = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"unknown setting {key!r} for {type(config).__module__.rsplit('.', 1)[-1]}; "
                f"valid settings: {', '.join(sorted(fields))}"
            )
        values[key] = _parse_value(key, hints[key], value) if isinstance(value, str) else value
    return dataclasses.replace(config, **values)


def check_positive(config: Any, *names: str) -> None:
    """ValueError naming the first field of ``config`` (int or tuple of ints) below 1."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if not values or not all(isinstance(v, int) and v >= 1 for v in values):
            raise ValueError(f"{name} must be positive integers; got {value!r}")


# ------------------------------------------------------------------ seeds and devices


def derive_seed(seed: int, *keys: Union[int, str]) -> int:
    """A deterministic 63-bit seed for the stream named by ``keys`` under ``seed``."""
    h = seed & 0xFFFFFFFFFFFF
    for key in keys:
        for ch in str(key) + "/":
            h = (h * 1_000_003 + ord(ch)) % (2**63 - 25)
    return h


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """:func:`torch_ntk._utils.runtime.resolve_device`, with CUDA initialized so that
    :func:`seeded` reaches its generators from the first draw on."""
    device = runtime.resolve_device(name)
    if device.type == "cuda":
        torch.cuda.init()
    return device


def circle(gamma: Tensor) -> Tensor:
    """Points (cos γ, sin γ) of the unit circle: [P] angles → [P, 2]."""
    return torch.stack([gamma.cos(), gamma.sin()], 1)


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were computed on (stored in every JSON)."""
    from .. import __version__, ops

    env = {
        "torch_ntk": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cuda_ops_built": bool(ops.cuda_built()),
    }
    env.update(cpu_info())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# -------------------------------------------------------------------------- training


def with_progress(iterable: Sized, desc: str, enabled: bool, leave: bool = True) -> Iterable:
    """``iterable`` behind a progress bar on stderr (:func:`torch_ntk._utils.runtime.progress_bar`)
    when ``enabled``."""
    bar = runtime.progress_bar(len(iterable), progress=True, desc=desc, iterable=iterable,
                               leave=leave, enabled=enabled)
    return iterable if bar is None else bar


def train_gd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    *,
    progress: bool = False,
    desc: str = "training",
    every: int = 0,
    callback: Optional[Callable[[int], None]] = None,
    optimizer_hook: Optional[Callable[[torch.optim.Optimizer], Any]] = None,
) -> list[float]:
    """Full-batch gradient descent on C = (1/2N) Σ_i ‖f(x_i) − y_i‖².

    With this cost, step k of ``lr`` is time t = k of gradient flow with learning rate
    ``lr`` in :mod:`torch_ntk.predict` (its conventions). ``callback(step)`` runs after
    every ``every``-th step (and at step 0 before training) when ``every`` > 0;
    ``optimizer_hook(optimizer)`` runs once before training (e.g. to attach a
    :class:`~torch_ntk.KernelDriftTracker`). Returns the loss before each step and the
    final loss (steps + 1 values).

    Raises:
        FloatingPointError: the loss became NaN or infinite (learning rate too large).
    """
    n = x.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if optimizer_hook is not None:
        optimizer_hook(opt)
    if callback is not None and every:
        callback(0)
    losses = []
    for step in with_progress(range(1, steps + 1), desc, enabled=progress, leave=False):
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * (model(x) - y).square().sum() / n
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{desc}: the loss is {value} at step {step}; the learning rate {lr} is too "
                "large for this kernel (see torch_ntk.predict.max_learning_rate)"
            )
        losses.append(value)
        loss.backward()
        opt.step()
        if callback is not None and every and step % every == 0:
            callback(step)
    with torch.no_grad():
        losses.append(float(0.5 * (model(x) - y).square().sum() / n))
    return losses


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (nan with fewer than two points)."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(xs, ys) if a > 0 and b > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else math.nan


def fmt(value: Optional[float], spec: str) -> str:
    """``format(value, spec)``, or "n/a" (as wide as ``spec`` asks) for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "n/a".rjust(int(width) if width else 0)
    return format(value, spec)


def rel_norm(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius, float64)."""
    a, b = a.double().cpu(), b.double().cpu()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# --------------------------------------------------------------------------- outputs


def new_figure(width: float, height: float, panels: int = 1):
    """A matplotlib Figure (no pyplot, no GUI backend) and a list of its ``panels`` axes,
    or (None, [None] * panels) when matplotlib is not installed (the experiment then
    writes its JSON only)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None, [None] * panels
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 110) -> None:
    """Atomically save ``fig`` as PNG (nothing happens when ``fig`` is None)."""
    if fig is None:
        return
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                             metadata={"Software": None}), binary=True)


class Stopwatch:
    """Named wall-clock phases: ``with sw("train"): ...``; ``sw.seconds`` sums them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def finish(name: str, config: Any, device: torch.device, results: dict, summary: dict,
           watch: Stopwatch, out: Optional[Union[str, os.PathLike]],
           draw: Callable[[dict], Any], extra_figures: Optional[dict[str, Any]] = None
           ) -> dict[str, Any]:
    """Assemble the JSON payload (plain lists and floats; NaN/inf become None) and, when
    ``out`` is given, write the figures and ``<name>.json`` there (the JSON last: its
    presence means the run completed).

    ``draw(payload)`` returns a Figure (saved as ``<name>.png``), a dict of file name →
    Figure, or None (matplotlib missing); ``extra_figures`` adds more file name → Figure.
    """
    payload = jsonable({
        "experiment": name,
        "config": dataclasses.asdict(config),
        "summary": summary,
        "seconds": {"total": watch.total, **watch.seconds},
        "environment": environment(device),
        "results": results,
    })
    if out is not None:
        os.makedirs(out, exist_ok=True)
        figures = draw(payload)
        if not isinstance(figures, dict):
            figures = {f"{name}.png": figures}
        figures.update(extra_figures or {})
        payload["files"] = [f"{name}.json"]
        for filename, fig in figures.items():
            if fig is not None:
                save_figure(fig, os.path.join(out, filename))
                payload["files"].append(filename)
        write_json(os.path.join(out, f"{name}.json"), payload)
    return payload
