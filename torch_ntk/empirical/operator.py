"""The empirical NTK as a linear operator: Θ·v by a vjp/jvp pair, never forming Θ.

For a batch x of N samples and n_L outputs, Θ = Θ(x, x) is an (N·n_L) × (N·n_L) symmetric
positive semi-definite matrix, row i·n_L + k holding Θ_k·(x_i, ·). With J the Jacobian of
the stacked outputs w.r.t. the trainable parameters θ ([N·n_L, P]), Θ = J Jᵀ, so

    Θ v = J (Jᵀ v),    Jᵀ v = Σ_i J_iᵀ v_i   (one vjp: a vector in parameter space)
                       J u                  (one jvp along that vector)

Cost per product: one forward+backward (the vjp) and one forward-mode pass (the jvp) over
the batch, O(N·P) time; memory O(P) for Jᵀv plus one chunk's activations — never a
Jacobian nor Θ. A batch of k vectors [N·n_L, k] runs the k products vmapped, in column
groups and sample chunks that fit the ``memory_budget``.

:class:`NTKOperator` has ``shape``, ``dtype``, ``device``, ``matvec`` (also ``@``) and
``diagonal`` — what conjugate gradients (``torch_ntk.distributed.conjugate_gradient`` takes
it as its kernel) and Lanczos/LOBPCG-type eigensolvers need (e.g. scipy's
``scipy.sparse.linalg.lobpcg`` or ``eigsh`` through a ``LinearOperator`` wrapping
``matvec``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._utils.model_context import kernel_context
from .._utils.runtime import default_memory_budget
from .budget import activation_numel
from .engines import JacobianBlocks
from .inputs import FuncModel, OutputFn, batch_size, output_size, reference, take
from .ntk import check_model_inputs

__all__ = ["NTKOperator"]


class NTKOperator:
    """Θ(x, x) of ``model`` on the batch ``x`` as a linear operator on R^{N·n_L}.

    Θ_(i,k),(j,k′) = Σ_p ∂f_k(x_i)/∂θ_p ∂f_k′(x_j)/∂θ_p (parameters with requires_grad),
    flattened sample-major: index i·n_L + k. ``matvec(v)`` = Θ v by one vjp (Jᵀv) and
    one jvp (J(Jᵀv)); Θ is never formed. The model is evaluated as ``empirical_ntk`` does
    (eval mode, generators restored) at each product, with its parameters' values at that
    time.

    Args:
        model: an nn.Module, called as ``model(x)``, ``model(*x)`` or ``model(**x)``.
        x: [N, ...] tensor of any dtype, or a tuple/dict of tensors with the N samples
            along dimension 0 (``torch_ntk.empirical.inputs``).
        output_fn: picks the output to differentiate ([N, n_L] or [N]); see
            :func:`torch_ntk.empirical_ntk`.
        memory_budget: bytes of working memory per product (default: as
            :func:`torch_ntk.empirical_ntk`); the samples are chunked and the vectors of
            a batch grouped to stay within it.
        chunk_size: samples per chunk (None: from the budget).

    Attributes:
        shape: (N·n_L, N·n_L); dtype, device: of the parameters (and of the products);
        n_samples: N; n_out: n_L.

    Raises:
        TypeError / ValueError as :func:`torch_ntk.empirical_ntk` for bad models and
        inputs (naming ``NTKOperator``); ValueError from ``matvec`` for a vector of the
        wrong shape, dtype or device, or a budget below one sample's products.

    Example::

        >>> op = NTKOperator(model, x)                 # x: [N, ...]
        >>> y = op.matvec(torch.randn(op.shape[0], dtype=op.dtype))
        >>> fit = torch_ntk.distributed.conjugate_gradient(op, y, ridge=1e-3)
    """

    function = "NTKOperator"

    def __init__(self, model: nn.Module, x, output_fn: OutputFn = None, *,
                 memory_budget: Optional[int] = None, chunk_size: Optional[int] = None):
        function = self.function
        if not isinstance(model, nn.Module):
            raise TypeError(f"{function}: model must be an nn.Module; got {type(model).__name__}")
        if output_fn is not None and not callable(output_fn):
            raise TypeError(f"{function}: output_fn must be a callable applied to the model's "
                            f"output; got {type(output_fn).__name__}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"{function}: chunk_size must be a positive integer; got "
                             f"{chunk_size!r}")
        if memory_budget is not None and (not isinstance(memory_budget, (int, float))
                                          or not memory_budget > 0):
            raise ValueError(f"{function}: memory_budget must be a positive number of bytes; "
                             f"got {memory_budget!r}")
        self.model, self.output_fn, self.chunk_size = model, output_fn, chunk_size
        with kernel_context(model):
            self.x, _, self.trainable = check_model_inputs(function, model, x, None, ("x", "x"))
            self.dtype, self.device = reference(self.x, self.trainable)
            self.n_out = output_size(function, model, self.x, output_fn)
            self.activations = activation_numel(model, self.x)
        self.memory_budget = int(memory_budget if memory_budget is not None
                                 else default_memory_budget(self.device))
        self.n_samples = batch_size(self.x)
        self.params_numel = sum(p.numel() for p in self.trainable.values())
        size = self.n_samples * self.n_out
        self.shape = (size, size)

    def __repr__(self) -> str:
        return (f"NTKOperator(N={self.n_samples}, n_L={self.n_out}, shape={self.shape}, "
                f"dtype={self.dtype})")

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    # -------------------------------------------------------------------------------

    def _sizes(self, k: int) -> tuple[int, int]:
        """(samples per chunk, vectors per group) for k vectors within the budget: each
        vector in flight holds 2 parameter-sized tensors (Jᵀv and its accumulator) and,
        per sample of a chunk, about 3 activation-sized tensors (the vjp's saved
        activations and cotangents, the jvp's tangents)."""
        s, budget = self.dtype.itemsize, self.memory_budget
        param = 2 * self.params_numel * s
        sample = 3 * self.activations * s
        need = param + sample
        if need > budget:
            raise ValueError(
                f"{self.function}: memory_budget={budget} bytes is below what one product "
                f"needs for one vector and one sample ({need} bytes: 2 parameter-sized "
                f"vectors of {self.params_numel} numbers and 3 copies of one sample's "
                f"{self.activations} activations); pass memory_budget >= {need}")
        columns = max(1, min(k, int(budget // 2 // need)))
        if self.chunk_size is not None:
            chunk = self.chunk_size
        else:
            chunk = max(1, int((budget - columns * param) // (columns * sample)))
        return min(chunk, self.n_samples), columns

    def _check_vector(self, v) -> tuple[Tensor, str]:
        n, nl = self.n_samples, self.n_out
        if not isinstance(v, Tensor):
            raise TypeError(f"{self.function}.matvec: v must be a torch.Tensor; got "
                            f"{type(v).__name__}")
        if v.dtype != self.dtype or v.device != self.device:
            raise ValueError(f"{self.function}.matvec: v must be {self.dtype} on "
                             f"{self.device} (the operator's); got {v.dtype} on {v.device}")
        if v.shape == (n * nl,):
            return v.reshape(n, nl, 1), "vector"
        if v.shape == (n, nl):
            return v.reshape(n, nl, 1), "samples"
        if v.dim() == 2 and v.shape[0] == n * nl:
            return v.reshape(n, nl, v.shape[1]), "columns"
        raise ValueError(
            f"{self.function}.matvec: v must be [N·n_L] = [{n * nl}], [N, n_L] = [{n}, {nl}] "
            f"or a batch of vectors [N·n_L, k] = [{n * nl}, k]; got {list(v.shape)}")

    def matvec(self, v: Tensor) -> Tensor:
        """Θ v for v [N·n_L] (→ [N·n_L]), [N, n_L] (→ [N, n_L]) or [N·n_L, k] (→
        [N·n_L, k]): Jᵀv by one vjp per chunk of samples (summed), then J(Jᵀv) by one
        jvp per chunk; k vectors run vmapped, in groups that fit the budget."""
        vs, layout = self._check_vector(v)
        n, nl, k = vs.shape
        chunk, columns = self._sizes(k)
        with kernel_context(self.model):
            f = FuncModel(self.model, self.trainable, self.output_fn)
            parts = [self._products(f, vs[:, :, c0:c0 + columns], chunk)
                     for c0 in range(0, k, columns)]
        out = torch.cat(parts, dim=2)  # [N, n_L, k]
        if layout == "vector":
            return out.reshape(n * nl)
        if layout == "samples":
            return out.reshape(n, nl)
        return out.reshape(n * nl, k)

    def _products(self, f: FuncModel, vs: Tensor, chunk: int) -> Tensor:
        """Θ vs [N, n_L, k] for k vectors at once (vmapped over k)."""
        params, n = f.params, self.n_samples
        cotangents = vs.permute(2, 0, 1)  # [k, N, n_L]
        u = None  # Jᵀ v per vector: {name: [k, *shape]}
        for i0 in range(0, n, chunk):
            xs = take(self.x, i0, min(i0 + chunk, n))
            _, vjp_fn = torch.func.vjp(lambda p: f.batch(p, xs), params)
            (part,) = torch.func.vmap(vjp_fn)(cotangents[:, i0:i0 + chunk])
            u = part if u is None else {name: u[name].add_(part[name]) for name in u}
        out = []
        for i0 in range(0, n, chunk):
            xs = take(self.x, i0, min(i0 + chunk, n))

            def along(tangent, xs=xs):
                return torch.func.jvp(lambda p: f.batch(p, xs), (params,), (tangent,))[1]

            out.append(torch.func.vmap(along)(u))  # [k, c, n_L]
        return torch.cat(out, dim=1).permute(1, 2, 0).detach()

    def diagonal(self) -> Tensor:
        """diag(Θ) [N·n_L]: Θ_kk(x_i, x_i), the per-sample squared gradient norms per
        output (``empirical_ntk(..., mode="sample_diagonal")`` flattened), by n_L backward
        passes vmapped over the samples, within the budget."""
        with kernel_context(self.model):
            engine = JacobianBlocks(self.model, self.trainable, self.x, None, "diagonal",
                                    self.n_out, self.output_fn, self.dtype)
            engine.function = self.function
            chunk = engine.size_blocks(self.memory_budget, self.chunk_size, False)
            n = self.n_samples
            parts = [engine.sample_diagonal(i0, min(i0 + chunk, n)) for i0 in range(0, n, chunk)]
        return torch.cat(parts).reshape(-1)
