"""Everything the server is told at start-up, checked by the command line before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StartupError(RuntimeError):
    """The server cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class Settings:
    bind: str
    model: str | None  # None: the embedded Primitive World prior
    device: str
    results_dir: Path
    keys_dir: Path | None  # CurveZMQ keys; None: no encryption, loopback only
    max_queued: int
    max_per_client: int
    max_message_bytes: int
    threads: int | None  # torch CPU threads; None: torch's default
    # Jobs run at once: in this process, their U-Net calls batched (engine.batching); on the Ray
    # backend, one actor each. None (Ray backend only): one actor per GPU of the cluster.
    jobs: int | None = 1
    backend: str = "local"  # "local": jobs run in this process; "ray": in Ray actors (server.ray_backend)
    ray_address: str | None = None  # the Ray cluster to join; None: start a local one

    @property
    def database(self) -> Path:
        return self.results_dir / "jobs.sqlite3"
