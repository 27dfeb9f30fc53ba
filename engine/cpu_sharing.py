"""How the engine shares a CPU with Blender, other engine processes and anything else running.

Two OpenMP settings, both read once when torch loads its runtime, so they are set before the first
``import torch``: the engine package imports this module first. A user's own values are kept.

* ``OMP_NUM_THREADS``: half the cores this process may use, at least one. The engine's per-step
  work is many small kernels that a second thread barely speeds up, and a thread count equal to
  the cores makes every parallel region wait for whichever thread the OS has put aside for
  Blender or another worker (docs/tuning.md: on 2 cores one thread is faster alone and keeps its
  speed beside a busy program).
* ``OMP_WAIT_POLICY=PASSIVE``: idle worker threads sleep rather than spin on cores others need.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """torch's CPU threads for the engine: half of ``cores`` (this process's cores when None), at least 1."""
    return max(1, (available_cores() if cores is None else cores) // 2)


def share_the_cpu() -> bool:
    """Set OpenMP's thread count and wait policy for torch, unless the user set them already.
    Returns whether the settings can still take effect: False once torch has been imported,
    whose runtime has read its settings already."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return True


share_the_cpu()
