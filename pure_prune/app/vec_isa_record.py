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

Application layer: the library writes no files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

__all__ = ["claimed_isas", "default_folder", "trust_recorded_probe"]


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
    be read or written is ignored. Call it before the first step is compiled or loaded, in every
    process, so that the config inductor hashes into its cache keys is the same in all of them.
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
        probed = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
        record = {"claimed": claimed, "probed": probed, "torch": torch.__version__}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(path)
        except OSError:
            pass
    if record.get("probed") != claimed:
        return False
    config.cpp.vec_isa_ok = True
    return True
