"""pact-harness core: contract, registry, configs, data, training, costs, grid (method-agnostic).

Imports run one way: ``methods -> baselines -> harness``. Nothing in this package imports a
specific method or backbone; methods are found through the ``pact_harness.methods`` entry points.
"""

__version__ = "0.1.0"
