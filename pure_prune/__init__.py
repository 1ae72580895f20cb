"""pure_prune: neural-network pruning as pure functions over parameter pytrees (torch.func)."""

from pure_prune import rng, tree

__version__ = "0.1.0"
__all__ = ["rng", "tree", "__version__"]
