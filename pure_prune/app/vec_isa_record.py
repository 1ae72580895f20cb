"""Inductor's CPU vector-ISA probe, run once per machine and remembered in a folder.

Before it compiles or loads CPU code, inductor checks each vector instruction set the CPU claims
(AVX-512, AVX2, ...) by building a small library and loading it in a fresh Python process: about
1.1-1.4 s of every process that compiles or loads a step (six subprocesses on this project's 2-core
AMD EPYC), even when every step comes from the step cache. :func:`trust_recorded_probe` runs that
probe once, writes what it found to ``<folder>/vec_isa-<key>.json`` (:func:`default_folder`: the
user's cache, so that a run with an empty inductor cache skips it too), and in later processes sets
inductor's own switch ``torch._inductor.config.cpp.vec_isa_ok = True`` (skip the probe, trust the
CPU's flags) where the recorded probe passed every ISA the CPU claims; where one failed, the probe
runs as before. The key covers the torch version, the Python executable, the CPU's ISA flags and
the ``CXX`` compiler, so another machine, torch or compiler probes again. With an empty inductor
cache the probe also builds its test libraries with the C++ compiler: ~10 s on this machine.

``vec_isa_ok`` does not cover the probes inside some ISAs: AVX-512 still builds and loads a test of
its BF16 instructions, AVX-512 VNNI one of its VNNI instructions (and AMX its tiles) wherever the
CPU claims them: three builds and three Python subprocesses on this project's AMD EPYC, ~2 s of a
run with an empty inductor cache and ~0.3 s of one whose steps all come from the step cache. So
:func:`trust_recorded_probe` also puts :func:`remembered_builds` in place of
``VecISA.check_build``, the one function those probes call: a test build already recorded for this
machine is answered from the record, and one not yet recorded runs as before and is added to it
when it passed (a failed one runs again next time, so a build that failed once never disables an
ISA for good).

Application layer: the library writes no files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["claimed_isas", "default_folder", "remembered_builds", "trust_recorded_probe"]


def claimed_isas(flags: list[str]) -> list[str]:
    """The vector ISAs inductor would probe, by name, in its order: those whose ``flags`` the CPU
    claims (``torch._inductor.cpu_vec_isa.x86_isa_checker()``, read from ``/proc/cpuinfo``)."""
    from torch._inductor import cpu_vec_isa

    return [str(isa) for isa in cpu_vec_isa.supported_vec_isa_list if str(isa) and all(
        f in flags for f in str(isa).split()
    )]  # fmt: skip


def default_folder() -> Path:
    """Where the probe's record lives: ``$PURE_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/pure_prune``,
    else ``~/.cache/pure_prune``."""
    if os.environ.get("PURE_PRUNE_CACHE"):
        return Path(os.environ["PURE_PRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pure_prune"


def trust_recorded_probe(folder: str | os.PathLike | None = None) -> bool:
    """Skip inductor's vector-ISA probe where ``folder`` records that it passed on this machine.

    Returns ``True`` when ``torch._inductor.config.cpp.vec_isa_ok`` was set to ``True`` (the
    recorded or the just-run probe passed every ISA the CPU claims; ``folder`` ``None``:
    :func:`default_folder`), ``False`` when the probe is
    left to inductor (not x86-64, ``TORCHINDUCTOR_VEC_ISA_OK`` set by the user, or an ISA that
    failed). The first call on a machine runs the probe (``cpu_vec_isa.valid_vec_isa_list()``) and
    writes the record (a temporary file, then renamed: never half written); a record that cannot
    be read or written is ignored. In every case ``VecISA.check_build`` becomes
    :func:`remembered_builds` over the record's passed test builds. Call it before the first step
    is compiled or loaded, in every process, so that the config inductor hashes into its cache keys
    is the same in all of them.
    """
    if platform.machine() not in ("x86_64", "AMD64") or "TORCHINDUCTOR_VEC_ISA_OK" in os.environ:
        return False
    import torch
    from torch._inductor import config, cpu_vec_isa

    folder = default_folder() if folder is None else folder
    flags = cpu_vec_isa.x86_isa_checker()
    claimed = claimed_isas(flags)
    ident = [torch.__version__, sys.executable, sorted(flags), os.environ.get("CXX")]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    path = Path(folder) / f"vec_isa-{key}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("claimed") != claimed:
        record = {"claimed": claimed, "probed": None, "builds": {}, "torch": torch.__version__}
    builds = record.get("builds") if isinstance(record.get("builds"), dict) else {}
    record["builds"] = builds

    def save() -> None:
        _write(path, record)

    real = getattr(cpu_vec_isa.VecISA.check_build, "__wrapped__", cpu_vec_isa.VecISA.check_build)
    cpu_vec_isa.VecISA.check_build = remembered_builds(real, builds, save)
    if record.get("probed") is None:
        record["probed"] = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
        save()
    if record.get("probed") != claimed:
        return False
    config.cpp.vec_isa_ok = True
    return True


def remembered_builds(
    check_build: Callable[[Any, str], bool], builds: dict[str, bool], save: Callable[[], None]
) -> Callable[[Any, str], bool]:
    """``check_build`` (inductor's ``VecISA.check_build(isa, code) -> bool``: does ``code`` build
    with ``isa``'s compiler flags and load?) answered ``True`` where ``builds`` records that this
    build passed, else run; a pass is added to ``builds`` and ``save()`` called (a failure is not
    recorded, so that a passing ISA is never disabled for good by a build that failed once).

    ``builds`` is keyed by the ISA's class, its flags at the time of the call (a probe adds the
    flags it tests) and a hash of ``code``. The returned function's ``__wrapped__`` is
    ``check_build``."""

    def check(isa: Any, code: str) -> bool:
        digest = hashlib.sha256(code.encode()).hexdigest()[:16]
        key = f"{type(isa).__name__}|{isa.build_arch_flags().strip()}|{digest}"
        if builds.get(key) is True:
            return True
        ok = bool(check_build(isa, code))
        if ok:
            builds[key] = True
            save()
        return ok

    check.__wrapped__ = check_build  # type: ignore[attr-defined]
    return check


def _write(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` as JSON through a temporary file renamed over it (never half
    written); a folder that cannot be written is left alone (the probes run again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(path)
    except OSError:
        pass
