"""Model → layer spec: the one lifting of a torch model into the kernels' architecture.

(The folder is ``lifting`` rather than ``lift`` so that ``torch_ntk.lift`` stays the public
function.)

- ``spec``: ``LayerSpec`` (its grammar, graph view ``nodes`` and ``check_input``), ``mlp_spec``;
- ``lift``: ``lift``, ``lift_module``, ``chain_modules``: the chain walk over modules, each
  lifted by the ``@lifts`` table the layer kinds fill (:mod:`torch_ntk.layers`);
- ``fx``: a module's ``forward`` read by torch.fx as a chain of links.
"""

from .lift import (EMPIRICAL_HINT, LIFTERS, LiftOptions, chain_modules, flat_modules, lift,
                   lift_module)
from .spec import LayerSpec, Node, mlp_spec

__all__ = ["EMPIRICAL_HINT", "LIFTERS", "LayerSpec", "LiftOptions", "Node", "chain_modules",
           "flat_modules", "lift", "lift_module", "mlp_spec"]
