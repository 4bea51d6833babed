"""What kernel gradient descent predicts (Jacot et al. §5): gradient flow, ensembles, GP, kernel PCA.

Train and test outputs of gradient flow at any time, infinite ensembles of networks, GP
inference with the NNGP or NTK as prior, kernel principal components, and the largest
stable step, and kernel gradient descent on any cost (cross-entropy…) by an ODE solver.
Modules: ``mse`` (:func:`gradient_descent_mse`,
:func:`gradient_descent_mse_ensemble`, :func:`max_learning_rate`), ``ode``
(:func:`gradient_descent`: any cost, integrated by torchdiffeq, the ``ode`` extra), ``gp``
(:func:`gp_inference`), ``evidence`` (:func:`gp_marginal_likelihood`, the log evidence,
differentiable), ``pca`` (:func:`kernel_pca`), ``spectrum`` (the eigendecomposition
they share and :class:`KernelConditioningWarning`), ``checks`` (their argument checks).

Conventions (the same in every function here):

- **Cost and time.** C(f) = (1/2N) Σ_i ‖f(x_i) − y_i‖² over N training samples, and
  gradient flow with learning rate η runs ∂_t f = −(η/N) K (f − Y) on the training set
  (K = Θ(X, X)). Time t is measured so that t = k is k steps of full-batch gradient
  descent with ``lr=η`` on the loss ``0.5 * ((f - y) ** 2).sum() / N`` (sum over outputs,
  mean over samples), up to the discretization error of those steps. With
  ``torch.nn.MSELoss()`` (mean over all N·n_L entries, no ½) and optimizer step lr,
  pass ``learning_rate = 2 * lr / n_L``.
- **Kernels over outputs.** A *scalar* kernel has shape [N1, N2] and stands for Θ ⊗ Id
  over the n_L outputs (the infinite-width case, or the trace-mode empirical NTK): the
  outputs evolve independently with the same kernel. A *full* kernel has shape
  [N1, N2, n_L, n_L] (entry [i, j, k, k'] = Θ_kk'(x_i, x_j)), as the full-mode empirical
  NTK returns; :func:`gradient_descent_mse`, :func:`gradient_descent` and
  :func:`max_learning_rate` accept it.
- **Targets.** y_train is [N] (one output) or [N, n_L]; every output has y's layout
  (:func:`gradient_descent` also takes integer class indices [N] for classification).
- **Precision.** Use float64. The closed forms go through an eigendecomposition (or a
  Cholesky factorization) of K, whose condition number on real data easily exceeds
  1/eps(float32) ≈ 8e6; float32 is accepted (and works on well-conditioned kernels)
  but predictions at large t are then dominated by rounding.
- **Singular kernels.** Eigenvalues below the rounding level ``10·n·eps·λ_max`` count as
  zero. Slightly negative eigenvalues within that level are clipped to 0; a kernel more
  negative than that raises ValueError naming the ``diag_reg`` that would make it PSD.
  At finite t a singular kernel is harmless (the λ → 0 limit is taken exactly); at
  t = ∞ its null space cannot be fitted, so the pseudo-inverse is used and a
  :class:`KernelConditioningWarning` names the ridge that gives a unique answer.
- Pure torch (:func:`gradient_descent` adds torchdiffeq, the ``ode`` extra): CPU and
  CUDA tensors, float32 and float64; every tensor argument must share k_train_train's
  dtype and device.

Example::

    >>> import torch, math, torch_ntk
    >>> model = torch_ntk.ntk_mlp([3, 512, 1], "relu", dtype=torch.float64)
    >>> x, x_test = torch.randn(20, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    >>> y = torch.sin(x.sum(1, keepdim=True))
    >>> k = torch_ntk.analytic_kernels(model, x).ntk            # [20, 20]
    >>> k_test = torch_ntk.analytic_kernels(model, x_test, x).ntk  # [5, 20]
    >>> predict_fn = torch_ntk.predict.gradient_descent_mse(k, y, learning_rate=1.0)
    >>> out = predict_fn(torch.tensor([0.0, 10.0, math.inf], dtype=torch.float64),
    ...                  k_test_train=k_test)
    >>> out.train.shape, out.test.shape
    (torch.Size([3, 20, 1]), torch.Size([3, 5, 1]))
"""

from .checks import Times
from .evidence import gp_marginal_likelihood
from .gp import Gaussian, GaussianPredictions, gp_inference
from .mse import Predictions, gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate
from .ode import COSTS, gradient_descent
from .pca import KernelPCA, kernel_pca
from .spectrum import KernelConditioningWarning

__all__ = [
    "Gaussian",
    "GaussianPredictions",
    "KernelConditioningWarning",
    "KernelPCA",
    "COSTS",
    "Predictions",
    "gp_inference",
    "gp_marginal_likelihood",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "kernel_pca",
    "max_learning_rate",
]
