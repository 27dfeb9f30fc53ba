"""What the engine reports while it works, and how a caller stops it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Progress:
    phase: str  # "optimise", then "mesh", then "colour"
    step: int
    total: int
    loss: Optional[float] = None
    preview: Optional[np.ndarray] = None  # small (H, W, 3) uint8 picture of the current state


ProgressCallback = Callable[[Progress], None]


class Cancelled(Exception):
    """Raised inside the engine when its cancel token is set; the job stops within one step."""


class CancelToken:
    """Thread-safe flag the caller sets; the engine checks it every optimisation step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the caller")
