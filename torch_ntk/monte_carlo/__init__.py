"""Monte-Carlo estimates of the kernels from random networks, and the convergence study.

- ``estimates``: ``monte_carlo_kernels``, ``iter_monte_carlo_kernels``;
- ``samples``: one sample's kernels and the running estimates;
- ``random_features``: random networks of an architecture and their features;
- ``convergence``: ``convergence_study`` (the finite-width NTK approaching its limit).
"""

from .estimates import (ConvergenceRecord, ConvergenceStudy, MonteCarloKernels, NNGP_ESTIMATORS,
                        SlopeFit, convergence_study, iter_monte_carlo_kernels,
                        monte_carlo_kernels, random_features, random_network)

__all__ = ["ConvergenceRecord", "ConvergenceStudy", "MonteCarloKernels", "NNGP_ESTIMATORS",
           "SlopeFit", "convergence_study", "iter_monte_carlo_kernels", "monte_carlo_kernels",
           "random_features", "random_network"]
