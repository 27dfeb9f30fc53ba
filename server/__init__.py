"""Dreamsmith's local inference server: a thin ZeroMQ shell over the engine (python -m server)."""

# Before anything here imports torch: its OpenMP threads must sleep when idle (engine.cpu_sharing).
from engine import cpu_sharing  # noqa: F401
