"""How the engine shares a CPU with Blender, other engine processes and anything else running.

PyTorch's OpenMP worker threads spin while they wait for the next parallel region. Alone on a
machine that costs nothing; beside a busy program the spinning threads hold the cores the others
need, and every parallel region then waits for a thread the OS has put aside (docs/tuning.md has
the measurements). With ``OMP_WAIT_POLICY=PASSIVE`` they sleep instead. OpenMP reads the variable
once, when torch loads its runtime, so it has to be set before the first ``import torch``: the
engine package imports this module first, which sets it.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def share_the_cpu() -> bool:
    """Make torch's OpenMP threads sleep rather than spin when idle, unless the user chose a policy
    (``OMP_WAIT_POLICY`` already set). Returns whether the setting can still take effect: False
    once torch has been imported, whose runtime has read its settings already."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return True


share_the_cpu()
