"""The tiles of a tiled kernel: the grid, each rank's share and order, the input checks made
before anything is written, and the tile computation.

Analytic tiles ("nngp", "ntk", MLP or CNN) run the fused op on the tile's slices of the
inputs. Empirical tiles reuse the engines of :func:`torch_ntk.empirical_ntk`, chosen by
the same :func:`torch_ntk.empirical.engines.make_engine`, on the whole x1/x2: a band's features — the structured method's
activations and cotangents (A_l, D_l, or a CNN's patches and cotangents), the Jacobian
method's per-sample Jacobians — are computed once per rank and kept, least recently used
out, within the memory budget; a tile [a:b, c:d] then costs only its Gram products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from torch import Tensor, nn

from ..analytic.kernels import analytic_kernels, as_spec
from ..empirical.engines import METHODS, make_engine, structured_plan
from .._utils.validation import check_batch, check_parameters_match

__all__ = ["KINDS", "METHODS", "TileGrid", "TileSource", "check_tile_inputs"]

KINDS = ("nngp", "ntk", "empirical")
FUNCTION = "tiled_kernel"


@dataclass(frozen=True)
class TileGrid:
    """The deterministic tile grid of an [n1, n2] kernel with tile size ``tile``.

    ``tiles`` lists (i, j) block indices row-major (i ≤ j only when ``symmetric``); a
    tile's id is its position in that list.
    """

    n1: int
    n2: int
    tile: int
    symmetric: bool

    def __post_init__(self) -> None:
        if self.symmetric and self.n1 != self.n2:
            raise ValueError(f"TileGrid: a symmetric grid needs n1 == n2; got {self.n1}, {self.n2}")
        if self.tile < 1:
            raise ValueError(f"TileGrid: tile must be a positive integer; got {self.tile}")

    @property
    def row_blocks(self) -> int:
        return math.ceil(self.n1 / self.tile)

    @property
    def col_blocks(self) -> int:
        return math.ceil(self.n2 / self.tile)

    @property
    def tiles(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.row_blocks)
                for j in range(i if self.symmetric else 0, self.col_blocks)]

    def __len__(self) -> int:
        r, c = self.row_blocks, self.col_blocks
        return r * (r + 1) // 2 if self.symmetric else r * c

    def bounds(self, tile_id: int) -> tuple[int, int, int, int]:
        """Rows a:b and columns c:d of tile ``tile_id``."""
        i, j = self.tiles[tile_id]
        t = self.tile
        return i * t, min((i + 1) * t, self.n1), j * t, min((j + 1) * t, self.n2)

    @staticmethod
    def assign(remaining: Sequence[int], rank: int, world_size: int) -> list[int]:
        """``rank``'s share of the remaining tile ids: a contiguous run of the sorted ids
        (sizes differ by at most one), so a rank's tiles cover few row bands."""
        ids = sorted(remaining)
        return ids[rank * len(ids) // world_size:(rank + 1) * len(ids) // world_size]

    def order(self, ids: Sequence[int]) -> list[int]:
        """``ids`` row band by row band, the columns of every other band in reverse (a
        serpentine): the column bands a rank just used are the first it needs next, so a
        feature cache smaller than all the column bands still hits."""
        tiles = self.tiles
        bands: dict[int, list[int]] = {}
        for t in sorted(ids):
            bands.setdefault(tiles[t][0], []).append(t)
        out: list[int] = []
        for k, row in enumerate(sorted(bands)):
            out.extend(bands[row] if k % 2 == 0 else reversed(bands[row]))
        return out


def check_tile_inputs(kind: str, model_or_spec, x1: Tensor, x2: Optional[Tensor]):
    """(model or spec, x1, x2, plan) checked before anything is allocated or written.

    Raises TypeError for a non-tensor or non-float input (or a model that is not an
    nn.Module for "empirical") and ValueError for an empty x1, NaN/Inf, a dtype or
    per-sample shape of x2 unlike x1, and inputs the network cannot take (the message
    gives the whole input's shape and, for a CNN, the expected [C, H, W]). ``plan`` is
    the structured plan of an empirical model that lifts (None otherwise).
    """
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"{FUNCTION}: {name} must be a torch.Tensor; got {type(x).__name__}")
    if kind != "empirical":
        spec = as_spec(model_or_spec, FUNCTION)
        if spec.is_mlp:
            check = dict(features=spec.input_features, flatten=spec.flatten_input)
            check_batch(FUNCTION, "x1", x1, **check)
            if x2 is not None:
                check_batch(FUNCTION, "x2", x2, like=x1, **check)
        else:
            spec.check_input(FUNCTION, "x1", x1)
            if x2 is not None:
                spec.check_input(FUNCTION, "x2", x2, like=x1)
        return spec, x1, x2, None
    if not isinstance(model_or_spec, nn.Module):
        raise TypeError(f"{FUNCTION}: kind='empirical' needs an nn.Module model; got "
                        f"{type(model_or_spec).__name__}")
    check_batch(FUNCTION, "x1", x1)
    if x2 is not None:
        check_batch(FUNCTION, "x2", x2, like=x1)
    check_parameters_match(FUNCTION, model_or_spec, x1)
    if not any(p.requires_grad for p in model_or_spec.parameters()):
        raise ValueError(f"{FUNCTION}: the model has no parameter with requires_grad=True, so "
                         "its NTK is identically zero")
    try:
        plan = structured_plan(model_or_spec)
    except ValueError:
        plan = None
    if plan is not None:  # the shape the network needs, named for the whole input
        plan.check_input(FUNCTION, "x1", x1)
        if x2 is not None:
            plan.check_input(FUNCTION, "x2", x2)
    return model_or_spec, x1, x2, plan


class TileSource:
    """K(x1[a:b], x2[c:d]) for tiles of one computation, on one rank.

    ``tile(a, b, c, d, diagonal)`` returns the [b−a, d−c] tile; ``diagonal`` (x2 = x1 and
    c = a) takes the symmetric path, exactly symmetric. ``feature_samples`` counts the
    samples whose structured features were computed and ``feature_passes`` the
    passes (empirical, structured method; each band once when the cache holds them);
    ``method`` names the engine ("analytic", "structured", "hooks", "jacobian", "ntk_vp").
    """

    def __init__(self, kind: str, model_or_spec, x1: Tensor, x2: Optional[Tensor], *,
                 tile_size: int, method: str = "auto", plan=None,
                 memory_budget: int = 2**30):
        self.kind, self.x1, self.x2 = kind, x1, x2
        self.feature_samples = 0
        self.feature_passes = 0
        if kind != "empirical":
            self.method, self.engine, self.spec = "analytic", None, model_or_spec
            return
        trainable = {k: p for k, p in model_or_spec.named_parameters() if p.requires_grad}
        self.engine = make_engine(FUNCTION, model_or_spec, x1, x2, "trace", method,
                                  trainable=trainable, plan=plan)
        self.method = self.engine.method
        if self.engine.plan is not None:
            self.engine.plan.features = self._counted(self.engine.plan.features)
        # The tile's own working set is planned by the engine; what is left of the
        # budget holds the cached bands (the current row band is kept outside it).
        self.engine.size_blocks(memory_budget, tile_size, False)

    def _counted(self, features: Callable) -> Callable:
        def counted(x: Tensor):
            self.feature_passes += 1
            self.feature_samples += x.shape[0]
            return features(x)

        return counted

    def tile(self, a: int, b: int, c: int, d: int, diagonal: bool) -> Tensor:
        if self.engine is None:
            x2 = None if diagonal else (self.x1 if self.x2 is None else self.x2)[c:d]
            return getattr(analytic_kernels(self.spec, self.x1[a:b], x2, get=self.kind,
                                            progress=False), self.kind)
        k = self.engine.block(a, b, c, d, diagonal)
        if diagonal and self.method != "structured":
            k = (k + k.T) / 2  # exactly symmetric, as empirical_ntk's diagonal blocks
        return k
