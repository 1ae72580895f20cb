"""The machine a result was measured on, for the records the commands and benchmarks write.

Application layer (not exported as ``pp.machine``); imports nothing heavy, so a benchmark can call
it before it imports torch.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_name"]


def cpu_name() -> str:
    """The CPU's model name from Linux's ``/proc/cpuinfo`` (e.g. ``"AMD EPYC"``); elsewhere
    ``platform.processor()``, else the machine type (``"x86_64"``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
