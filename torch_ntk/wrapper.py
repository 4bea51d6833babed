"""A drop-in ``nn.Module`` wrapper that adds NTK methods to any model.

``NTK(model)`` behaves exactly like ``model``: ``forward`` calls it and returns its
output unchanged, ``parameters()`` yields the very same tensors in the same order (so
an optimizer, its ``state_dict`` and any training loop work unchanged and give
bit-identical results), and ``NTK(model).state_dict()`` has exactly the keys of
``model.state_dict()`` (no ``"model."`` prefix, unlike ``DataParallel``), so
checkpoints are interchangeable in both directions. ``load_state_dict`` accepts
either spelling (``"0.weight"`` or ``"model.0.weight"``), also when the wrapper is a
submodule of a larger model. ``named_parameters()`` and ``named_modules()`` do show
the ``model.`` prefix, as for any submodule. Attributes the wrapper does not define
are looked up on the model (``NTK(seq)[0]``, ``NTK(net).fc``).

What it adds:

``empirical(x1, x2=None, mode="full")``
    The finite-width NTK Θ at the current parameters (:func:`torch_ntk.empirical_ntk`:
    structured path when the model lifts to an MLP or a CNN, torch.func otherwise).
``limit(x1, x2=None)``
    The infinite-width NNGP Σ and NTK Θ∞ of the same architecture
    (:func:`torch_ntk.analytic_kernels`); ValueError naming the first layer that has
    no infinite-width counterpart when the model does not lift.
``linearize()``
    The first-order Taylor model around the current parameters θ0,
    f_lin(x; θ) = f(x; θ0) + J(x)(θ − θ0), as a trainable :class:`Linearized` module.
``tracker(probe_x, probe_y=None, ...)``
    A :class:`torch_ntk.KernelDriftTracker` for this model.

Kernels are computed without perturbing the model: in eval mode (dropout off, batch
norm on its running statistics), with every module's train/eval flag restored, no
gradient touched, no autograd graph kept and the random number generators (CPU and
the CUDA devices in use) left exactly as they were.

Example::

    >>> net = NTK(ntk_mlp([3, 512, 1], "relu"))
    >>> x = torch.randn(8, 3)
    >>> net(x).shape                       # the model's own output
    torch.Size([8, 1])
    >>> net.empirical(x, mode="trace").shape, net.limit(x).ntk.shape
    (torch.Size([8, 8]), torch.Size([8, 8]))
    >>> lin = net.linearize()              # train it like any module
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .analytic.kernels import Kernels, analytic_kernels
from .analytic.refusal import no_limit_error
from .lifting.lift import lift
from .empirical.ntk import compute_empirical_ntk
from ._utils.model_context import kernel_context, unwrap
from .tracking.tracker import KernelDriftTracker
from ._utils.validation import check_batch, check_parameters_match

__all__ = ["NTK", "Linearized", "unwrap", "kernel_context"]

_PREFIX = "model."


class NTK(nn.Module):
    """Wrap ``model`` to add NTK methods without changing anything it does.

    Args:
        model: any ``nn.Module``. It is registered as the submodule ``model``; the
            wrapper owns no parameter or buffer of its own.

    ``forward(*args, **kwargs)`` returns ``model(*args, **kwargs)`` unchanged. See the
    module docstring for the state-dict convention and the added methods.
    """

    # The attribute holding the wrapped model (torch_ntk._utils.model_context.unwrap looks through it).
    wrapped_model_attribute = "model"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"NTK: model must be an nn.Module; got {type(model).__name__}")
        if isinstance(model, NTK):
            model = model.model
        self.model = model
        self._load_prefix = ""  # set by the load pre-hook, read by the post-hook
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)
        self.register_load_state_dict_post_hook(_missing_without_prefix)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # -- drop-in behaviour ------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name == "model" or modules is None or "model" not in modules:
                raise
            return getattr(modules["model"], name)

    def __getitem__(self, index):
        return self.model[index]

    def __len__(self) -> int:
        return len(self.model)

    def __bool__(self) -> bool:
        return bool(self.model)

    def __iter__(self):
        return iter(self.model)

    # -- kernels ----------------------------------------------------------------------

    def empirical(self, x1: Tensor, x2: Optional[Tensor] = None, mode: str = "full",
                  **kwargs: Any) -> Tensor:
        """The finite-width NTK Θ(x1, x2) at the current parameters.

        Θ_kk′(x, x′) = Σ_p ∂f_k(x)/∂θ_p ∂f_k′(x′)/∂θ_p over the trainable parameters,
        computed in eval mode (see the module docstring).

        Args:
            x1: [N1, ...] float32/float64, the model's input.
            x2: [N2, ...] like x1, or None for x2 = x1 (exactly symmetric result).
            mode: "full" → [N1, N2, n_L, n_L]; "trace" → [N1, N2], (1/n_L) Σ_k Θ_kk (the
                mean over outputs: the scale of ``limit(...).ntk``); "diagonal" →
                [N1, N2, n_L].
            **kwargs: ``method``, ``chunk_size``, ``memory_budget``, ``out``,
                ``progress``, ``return_info`` of :func:`torch_ntk.empirical_ntk`.
        """
        return compute_empirical_ntk("NTK.empirical", self.model, x1, x2, mode, **kwargs)

    def limit(self, x1: Tensor, x2: Optional[Tensor] = None,
              get: Union[str, Sequence[str]] = ("nngp", "ntk"), *,
              progress: Optional[bool] = None, **kwargs: Any) -> Kernels:
        """The infinite-width kernels of this architecture (Jacot et al. Thm 1).

        Args:
            x1: [N1, n_0] float32/float64 (any [N1, ...] if the model starts with Flatten).
            x2: [N2, n_0] like x1, or None for x2 = x1.
            get: "nngp", "ntk" or both.
            progress: a progress bar on stderr over the pairs of inputs: None (default)
                once a long run (a 1000-image CNN kernel takes about a minute on a CPU)
                has lasted two seconds; True at once; False never
                (:func:`torch_ntk.analytic_kernels`).
            **kwargs: ``quadrature_degree``, ``force_quadrature`` of
                :func:`torch_ntk.analytic_kernels`.

        Returns:
            :class:`torch_ntk.Kernels` (nngp [N1, N2] = Σ^(L), ntk [N1, N2] = Θ∞), per
            output: the full NTK over n_L outputs is Θ∞ ⊗ Id, so
            ``empirical(..., mode="trace")`` (a mean over outputs) tends to Θ∞ as the
            widths grow. With NTK-parametrized layers Θ∞ does not depend on the hidden
            widths; with standard ones (``nn.Linear``) it grows with them (README, "Scales").

        Raises:
            TypeError: inputs that are not float32/float64 tensors.
            ValueError: the model does not lift to an MLP layer spec (the message names
                the offending module and its position); inputs of another dtype or
                device than the model's parameters; NaN/Inf; empty batches.
        """
        function = "NTK.limit"
        x1 = check_batch(function, "x1", x1)
        if x2 is not None:
            x2 = check_batch(function, "x2", x2, like=x1)
        check_parameters_match(function, self.model, x1)
        try:
            spec = lift(self.model)
        except ValueError as error:
            raise no_limit_error(function, self.model, error, "NTK.empirical") from error
        return analytic_kernels(spec, x1, x2, get, progress=progress, **kwargs)

    def linearize(self) -> "Linearized":
        """f_lin(x; θ) = f(x; θ0) + J(x)(θ − θ0) around the current parameters θ0.

        Returns a new :class:`Linearized` module holding its own copy of the model;
        training it never changes this model (and vice versa).

        Raises:
            ValueError: every parameter is frozen (requires_grad=False): the linearization
                would be the constant f(x; θ0), with nothing to train.
        """
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                "NTK.linearize: every parameter of the model has requires_grad=False, so the "
                "linearized model would have nothing to train; unfreeze the parameters to "
                "linearize around (p.requires_grad_(True))")
        return Linearized(self.model)

    def tracker(self, probe_x: Tensor, probe_y: Optional[Tensor] = None, **kwargs: Any):
        """A :class:`torch_ntk.KernelDriftTracker` of this model on ``probe_x``."""
        return KernelDriftTracker(self.model, probe_x, probe_y, **kwargs)


def _drop_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: "<prefix>model.k" → "<prefix>k", keeping the order."""
    inner = prefix + _PREFIX
    items = list(state_dict.items())
    for key, _ in items:
        if key.startswith(prefix):
            del state_dict[key]
    for key, value in items:
        if key.startswith(inner):
            key = prefix + key[len(inner):]
        state_dict[key] = value
    # Version metadata under both spellings: loading into the bare model reads
    # "<prefix>k", loading back into the wrapper reads "<prefix>model.k".
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if (k + ".").startswith(inner)]:
            metadata[prefix + key[len(inner):] if key != inner[:-1] else prefix[:-1]] = metadata[key]


def _add_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict,
                strict: bool, missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """load_state_dict pre-hook: accept the bare model's keys as well as "model."-prefixed ones.

    A key that names an entry of the bare model is renamed "<prefix>model.<key>" (this
    spelling wins if a model has a child called "model"); "model."-prefixed keys are
    kept; unknown keys are left as they are, to be reported as unexpected.
    """
    module._load_prefix = prefix
    bare = set(module.model.state_dict(keep_vars=True).keys())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest in bare:
            state_dict[prefix + _PREFIX + rest] = state_dict.pop(key)


def _missing_without_prefix(module: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook: report missing keys in the bare model's spelling."""
    inner = module._load_prefix + _PREFIX
    missing = incompatible_keys.missing_keys
    missing[:] = [inner[: -len(_PREFIX)] + k[len(inner):] if k.startswith(inner) else k
                  for k in missing]


class Linearized(nn.Module):
    """The first-order Taylor expansion of a model around parameters θ0.

        f_lin(x; θ) = f(x; θ0) + J(x)(θ − θ0),   J(x) = ∂f(x; θ)/∂θ at θ0

    computed in one ``torch.func.jvp`` per call (one forward pass with forward-mode
    tangents; no Jacobian is formed). Gradients flow to θ through the tangent, so the
    module trains with any optimizer; the loss landscape in θ is exactly quadratic for
    squared error (Jacot et al. §5: a linear model with kernel Θ at θ0). It composes
    with torch.func, so ``empirical_ntk(lin, x)`` works — and equals the network's
    NTK at θ0 whatever θ is. When a module in training mode owns buffers (batch norm
    updating its running statistics), the same jvp runs through
    ``torch.autograd.forward_ad`` instead, which allows those in-place updates.

    Attributes:
        model: a copy of the original model whose trainable parameters are θ (they
            start at θ0; frozen parameters and buffers stay as they were and are
            constants of the expansion).
        theta0: a module whose buffers are θ0, under the parameters' own names
            (``theta0.0.weight``), so ``state_dict`` saves and restores both θ and θ0.

    The copy keeps the original's modules, so train/eval modes act as there: a dropout
    layer in training mode linearizes the network with that call's dropout mask.

    Args:
        model: the network to expand; θ0 = its trainable parameters now.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model = unwrap(model)
        self.model = copy.deepcopy(model)
        self.theta0 = nn.Module()
        self._names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("Linearized: the model has no parameter with requires_grad=True")
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                _register_nested_buffer(self.theta0, name, p.detach().clone())

    def reference_parameters(self) -> dict[str, Tensor]:
        """θ0: {parameter name: tensor} (the buffers themselves, not copies)."""
        return {name: self.theta0.get_buffer(name) for name in self._names}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        theta0 = self.reference_parameters()
        params = dict(self.model.named_parameters())
        tangents = {name: params[name] - theta0[name] for name in self._names}
        if self._may_update_buffers():
            out, jvp_out = self._jvp_forward_ad(theta0, tangents, args, kwargs)
        else:
            def f(p):
                return torch.func.functional_call(self.model, p, args, kwargs)

            out, jvp_out = torch.func.jvp(f, (theta0,), (tangents,))
        return tree_map(lambda a, b: a + b, out, jvp_out)

    def _may_update_buffers(self) -> bool:
        """A module in training mode that owns buffers (batch norm's running statistics)."""
        return any(m.training and next(m.buffers(recurse=False), None) is not None
                   for m in self.model.modules())

    def _jvp_forward_ad(self, theta0, tangents, args, kwargs):
        """The same jvp by torch.autograd.forward_ad, which lets the forward pass update
        buffers in place (torch.func.jvp refuses to mutate captured tensors). The
        buffers are updated from the statistics of f(x; θ0), as the original would be."""
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            duals = {name: fwAD.make_dual(theta0[name], tangents[name]) for name in self._names}
            out = torch.func.functional_call(self.model, duals, args, kwargs)
            leaves, spec = tree_flatten(out)
            primal, tangent = [], []
            for leaf in leaves:
                value, derivative = fwAD.unpack_dual(leaf)
                primal.append(value)
                tangent.append(torch.zeros_like(value) if derivative is None else derivative)
        return tree_unflatten(primal, spec), tree_unflatten(tangent, spec)


def _register_nested_buffer(root: nn.Module, dotted: str, tensor: Tensor) -> None:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    module.register_buffer(leaf, tensor)
