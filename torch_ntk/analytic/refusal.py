"""The refusal of an infinite-width kernel for a model without one in torch_ntk, pointing to
what works today (issue 32, item 12)."""

from __future__ import annotations

from torch import nn

from ..lifting.lift import EMPIRICAL_HINT

__all__ = ["LIMIT_ALTERNATIVES", "no_limit_error"]

LIMIT_ALTERNATIVES = (
    "Closed-form limits exist for MLPs and CNNs of the layers torch_ntk.lift accepts, "
    "chains or graphs of independent branches (residual sums, concatenation, LayerNorm; "
    "no attention yet). What works for any "
    "architecture today: torch_ntk.monte_carlo_kernels(model_fn, x), a Monte-Carlo estimate "
    "of the infinite-width NNGP/NTK with standard errors (model_fn(seed) returns a freshly "
    "initialized model; wider models are closer to the limit), and {empirical} for the "
    "finite-width NTK of this model."
)


def no_limit_error(function: str, model: nn.Module, error: ValueError,
                   empirical: str = "torch_ntk.empirical_ntk(model, x)") -> ValueError:
    """ValueError for ``function`` (the entry point called) on a model whose lift failed
    with ``error``: why (the layer or fx node, from lift) and the alternatives."""
    why = str(error).replace(f" {EMPIRICAL_HINT}", "").rstrip().rstrip(".")
    return ValueError(
        f"{function}: {type(model).__name__} has no infinite-width kernel in torch_ntk "
        f"({why}). " + LIMIT_ALTERNATIVES.format(empirical=empirical)
    )
