"""Helpers for testing and benchmarking a server: a server subprocess, job params sized for the tiny
test prior, and a raw connection that can send anything at all, malformed on purpose.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import zmq

from . import protocol
from .client import Client, ServerTimeout
from .protocol import Message, Msg

# A few seconds on engine.testing's tiny prior, most of it the colour stage's 512² texture. The
# coarse lattice keeps the mesh near 7k faces: at 40, xatlas took as long again as all the rest.
FAST_JOB = dict(preset="draft", steps=5, grid_resolution=24, mesh_resolution=24)
# Runs for many minutes on the tiny prior: for tests that cancel or interrupt a running job.
LONG_JOB = dict(preset="draft", steps=20000, grid_resolution=24, mesh_resolution=24)


class RawConnection:
    """A DEALER that sends arbitrary frames and reads the server's replies, strictly decoded."""

    def __init__(self, address: str, context: zmq.Context | None = None):
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames, copy=False)

    def reply(self, timeout: float = 10.0) -> Message | None:
        """The next reply (events of jobs on this connection are skipped), or None by the timeout."""
        deadline = time.monotonic() + timeout
        while self.socket.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            message = protocol.decode(self.socket.recv_multipart(copy=False), Msg.REPLIES | Msg.EVENTS, 2**31)
            if message.type in Msg.REPLIES:
                return message
        return None

    def request(self, frames: list, timeout: float = 10.0) -> Message | None:
        self.send(frames)
        return self.reply(timeout)


START_TIMEOUT_S = 180.0  # a busy CI machine needs a while to import torch and load a prior
STOP_TIMEOUT_S = 10.0
LEAN_ARGS = ("--threads", "1")  # tests share the machine with each other and with whatever else runs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """One ``python -m server`` subprocess; restartable on the same port and results directory."""

    def __init__(self, model: str, results_dir: Path, log_path: Path, extra_args=(), client_options=None):
        self.model, self.results_dir, self.log_path = str(model), Path(results_dir), Path(log_path)
        self.extra_args = [*LEAN_ARGS, *extra_args]
        self.client_options = client_options or {}
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        self._clients: list[Client] = []

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "server", "--bind", self.address, "--model", self.model,
                "--results-dir", str(self.results_dir), *self.extra_args]

    def start(self, timeout: float = START_TIMEOUT_S) -> "ServerProcess":
        """Launch and wait until it answers ping; raises with the server's log if it does not."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.command, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with Client(self.address, **{**self.client_options, "timeout": 1.0}) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    probe.ping(timeout=1.0)
                    return self
                except ServerTimeout:
                    continue
        self.kill()
        raise RuntimeError(f"the server did not answer ping within {timeout:.0f} s:\n{self.log_tail()}")

    def client(self, client_id: str | None = None, **options) -> Client:
        """A Client for this server, closed when the server is stopped."""
        client = Client(self.address, client_id=client_id, **{**self.client_options, **options})
        self._clients.append(client)
        return client

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
