"""pure_prune: neural-network pruning as pure functions over parameter pytrees (torch.func).

``import pure_prune as pp`` gives the library's modules as attributes, each imported on first use
(so ``import pure_prune`` stays cheap and the command line starts fast)::

    import pure_prune as pp

    scores = pp.importance.magnitude.magnitude(params, pp.mask.ones_like(params))
    masks = pp.select.unstructured(scores, 0.8, scope="global")
    params = pp.mask.apply(params, masks)

The library (what these attributes name) is pure functions over trees: no module state, hooks,
files or progress bars. The application built on it (data sets, run directories, the CLI, sweeps,
reports) lives in the other modules of this package and is not exported here. ``docs/api.md``
lists every public function with its purpose and an example per area.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

LIBRARY_MODULES = (
    "algorithms",
    "allocate",
    "batching",
    "compact",
    "compact_training",
    "groups",
    "importance",
    "interop",
    "kth",
    "llm",
    "losses",
    "mask",
    "optim",
    "resize",
    "rng",
    "schedule",
    "seeds",
    "select",
    "stage",
    "testing",
    "train",
    "tree",
)
"""The modules ``import pure_prune as pp`` exposes as ``pp.<name>`` (imported on first access)."""

__all__ = [*LIBRARY_MODULES, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from pure_prune import (  # noqa: F401
        algorithms,
        allocate,
        batching,
        compact,
        compact_training,
        groups,
        importance,
        interop,
        kth,
        llm,
        losses,
        mask,
        optim,
        resize,
        rng,
        schedule,
        seeds,
        select,
        stage,
        testing,
        train,
        tree,
    )


def __getattr__(name: str) -> Any:
    """Import a library module on first access as ``pure_prune.<name>`` (PEP 562)."""
    if name in LIBRARY_MODULES:
        module = importlib.import_module(f"pure_prune.{name}")
        globals()[name] = module
        return module
    raise AttributeError(
        f"module 'pure_prune' has no attribute {name!r}; the library's modules are {', '.join(LIBRARY_MODULES)}"
    )


def __dir__() -> list[str]:
    return sorted({*globals(), *LIBRARY_MODULES})
