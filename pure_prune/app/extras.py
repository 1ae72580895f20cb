"""Optional dependencies: import one, or fail with one line that names the pip extra installing it.

The core library needs only torch, optree, einops, numpy, safetensors and tqdm. Two kinds of work
need more, installed by extras of the ``pure-prune`` distribution:

* ``data``: ``scikit-learn`` (the bundled ``digits`` set) and ``mnist1d`` (the ``mnist1d`` generator);
* ``plots``: ``matplotlib`` (the PNGs of ``pure-prune report`` and ``pure-prune sweep``).

(``pure_prune.testing`` needs ``hypothesis``, from the ``test`` extra, and imports it directly.)

    >>> load_digits = require("sklearn.datasets", "the digits data set").load_digits
    >>> # without scikit-learn: MissingExtraError: scikit-learn is not installed; it is needed for
    >>> # the digits data set: pip install "pure-prune[data]"
"""

from __future__ import annotations

import importlib
import types

__all__ = ["EXTRAS", "MissingExtraError", "pyplot", "require"]

# top-level module -> (distribution to install, extra of pure-prune that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "data"),
    "mnist1d": ("mnist1d", "data"),
    "matplotlib": ("matplotlib", "plots"),
    "transformers": ("transformers", "hf"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed. ``str(err)`` is one line naming the missing
    distribution, what needed it and the ``pip install "pure-prune[<extra>]"`` command; ``err.extra`` is the
    extra and ``err.name`` the missing module."""

    def __init__(self, message: str, *, name: str, extra: str):
        super().__init__(message, name=name)
        self.extra = extra


def require(module: str, purpose: str) -> types.ModuleType:
    """Import ``module`` (dotted, e.g. ``"sklearn.datasets"``) and return it.

    ``purpose`` says what needs it, for the message (``"the digits data set"``). Raises
    :class:`MissingExtraError` when the module or one of its own dependencies is not installed, and
    ``ValueError`` for a module whose top-level package is not one of :data:`EXTRAS`."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"module {module!r} is not an optional dependency; known: {', '.join(EXTRAS)}")
    dist, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or top
        what = dist if missing.split(".")[0] == top else f"{missing} (a dependency of {dist})"
        raise MissingExtraError(
            f'{what} is not installed; it is needed for {purpose}: pip install "pure-prune[{extra}]"',
            name=missing,
            extra=extra,
        ) from None


def pyplot(purpose: str = "plots") -> types.ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (PNG files, no display needed).

    Raises :class:`MissingExtraError` naming the ``plots`` extra when matplotlib is not installed."""
    require("matplotlib", purpose).use("Agg")
    return require("matplotlib.pyplot", purpose)
