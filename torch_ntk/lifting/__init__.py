"""Model → layer spec: the one lifting of a torch model into the kernels' architecture.

(The folder is ``lifting`` rather than ``lift`` so that ``torch_ntk.lift`` stays the public
function.)

- ``lift``: ``lift``, ``lift_module``, ``chain_modules``, ``LayerSpec``, ``mlp_spec``;
- ``fx``: a module's ``forward`` read by torch.fx as a chain of links.
"""

from .lift import (EMPIRICAL_HINT, LIFTERS, LayerSpec, LiftOptions, chain_modules, flat_modules,
                   lift, lift_module, mlp_spec)

__all__ = ["EMPIRICAL_HINT", "LIFTERS", "LayerSpec", "LiftOptions", "chain_modules",
           "flat_modules", "lift", "lift_module", "mlp_spec"]
