"""Dreamsmith job server figures, against a real server process on a free loopback port:

* submit -> accepted round trip (median over N), with the worker idle and with a job running;
* progress-event latency: the engine's callback (a timestamp in each progress message) to the client;
* the worker's throughput (engine steps/s on a fixed job) without and with 100 status requests per
  second from another client, as a ratio (goal: at most 5 % slower).

Usage: python bench/server_bench.py [--model PATH] [--rounds 6] [--steps 200] [--submits 50] [--threads 1]
       [--backend local|ray] [--json out/server_bench.json]
Without --model, the tiny random test prior is used: its steps are short, so any cost the server adds
shows up at its largest. ``--backend ray`` takes the same figures with the job in a Ray actor (one, on
a local Ray): what the front adds on that backend.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

from server.client import Client
from server.protocol import Msg, State
from server.testing import FAST_JOB, LONG_JOB, ServerProcess

STATUS_RATE_HZ = 100
# The server's flags per backend: the Ray one runs its job in one actor of a local Ray.
BACKEND_ARGS = {"local": [], "ray": ["--backend", "ray", "--jobs", "1"]}


def submit_round_trips_ms(client: Client, count: int) -> list[float]:
    """Each job is cancelled at once; waiting for its end keeps the worker's state the same for every submit."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        job_id = client.submit("a red cube", **FAST_JOB)
        samples.append((time.perf_counter() - started) * 1000)
        client.cancel(job_id)
        client.wait(job_id, timeout=60)
    return samples


def busy_submit_round_trips_ms(client: Client, count: int) -> list[float]:
    blocker = client.submit("a blue sphere", **LONG_JOB)
    while not any(e.type == Msg.PROGRESS for e in client.poll_events(timeout=60)):
        pass
    samples = submit_round_trips_ms(client, count)  # these queue behind the blocker and leave at once
    client.cancel(blocker)
    client.wait(blocker, timeout=60)
    return samples


def fixed_job(client: Client, steps: int) -> tuple[float, list[float]]:
    """(optimisation steps per second by the server's clock, progress-event latencies in ms)."""
    stamps, latencies = [], []

    def on_event(event) -> None:
        if event.type == Msg.PROGRESS and event.header["phase"] == "optimise":
            latencies.append((time.time() - event.header["time"]) * 1000)
            stamps.append((event.header["step"], event.header["time"]))

    job_id = client.submit("a red cube", **{**FAST_JOB, "steps": steps})
    final = client.wait(job_id, on_event=on_event, timeout=3600)
    if final["state"] != State.DONE:
        raise RuntimeError(f"the benchmark job ended {final['state']}: {final['error']}")
    (first_step, first_time), (last_step, last_time) = stamps[0], stamps[-1]
    return (last_step - first_step) / (last_time - first_time), latencies


class StatusLoad(threading.Thread):
    """Status requests at a steady rate from a client of its own, until stopped."""

    def __init__(self, address: str, rate_hz: float):
        super().__init__(daemon=True)
        self.address, self.period = address, 1.0 / rate_hz
        self.stop_event, self.sent, self.seconds = threading.Event(), 0, 0.0

    def run(self) -> None:
        with Client(self.address) as client:
            client.hello()
            started = next_at = time.monotonic()
            while not self.stop_event.is_set():
                client.status()
                self.sent += 1
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))
            self.seconds = time.monotonic() - started


def throughput_rounds(client: Client, address: str, steps: int, rounds: int) -> dict:
    """Alternating runs without and with the status load, so drift in machine load hits both alike."""
    quiet, loaded, quiet_latency, loaded_latency, rates = [], [], [], [], []
    for _ in range(rounds):
        rate, latency = fixed_job(client, steps)
        quiet.append(rate)
        quiet_latency += latency
        load = StatusLoad(address, STATUS_RATE_HZ)
        load.start()
        rate, latency = fixed_job(client, steps)
        load.stop_event.set()
        load.join()
        loaded.append(rate)
        loaded_latency += latency
        rates.append(load.sent / load.seconds)
    ratio = statistics.median(loaded) / statistics.median(quiet)
    return {
        "steps_per_s_without_load": [round(r, 2) for r in quiet],
        "steps_per_s_with_status_load": [round(r, 2) for r in loaded],
        "status_requests_per_s_achieved": round(statistics.median(rates), 1),
        "throughput_ratio_with_over_without": round(ratio, 4),
        "slowdown_percent": round((1 - ratio) * 100, 2),
        "progress_latency_ms": {"without_load": latency_summary(quiet_latency),
                                "with_status_load": latency_summary(loaded_latency)},
    }


def latency_summary(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {"median": round(statistics.median(ordered), 3), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


def measure(rounds: int = 6, steps: int = 200, submits: int = 50, threads: int = 1, model: str | None = None,
            backend: str = "local") -> dict:
    """Start a server on a free loopback port, take every figure against it, stop it.

    Args:
        rounds: throughput runs per condition (without and with the status load).
        steps: optimisation steps of the fixed job.
        submits: submits per round-trip median.
        threads: the server's torch threads (each Ray actor's, on the Ray backend).
        model: prior folder; None for the tiny random test prior (written to a temporary folder).
        backend: "local" (jobs in the server process) or "ray" (in one actor of a local Ray).
    """
    with tempfile.TemporaryDirectory(prefix="dreamsmith-bench-") as folder:
        folder = Path(folder)
        if model is None:
            from engine.testing import save_tiny_prior

            model = str(save_tiny_prior(folder / "tiny-prior"))
        server = ServerProcess(model, folder / "results", folder / "server.log",
                               ["--threads", str(threads), "--max-per-client", "1000", *BACKEND_ARGS[backend]])
        server.start()
        try:
            return {**measure_server(server, rounds, steps, submits),
                    "setup": {"model": model, "steps": steps, "rounds": rounds, "server_threads": threads,
                              "backend": backend, "machine": platform.platform(),
                              "python": platform.python_version()}}
        finally:
            server.stop()


def measure_server(server: ServerProcess, rounds: int, steps: int, submits: int) -> dict:
    """Every figure of ``measure`` against a server already started (with ``--max-per-client`` of at
    least 2).

    Args:
        server: the server under test.
        rounds, steps, submits: as ``measure`` takes them.
    """
    client = server.client(client_id="bench", timeout=60)
    idle = submit_round_trips_ms(client, submits)
    busy = busy_submit_round_trips_ms(client, submits)
    return {
        "submit_to_accepted_ms": {"idle_median": round(statistics.median(idle), 3),
                                  "busy_median": round(statistics.median(busy), 3), "n": submits},
        **throughput_rounds(client, server.address, steps, rounds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="prior folder (default: the tiny random test prior)")
    parser.add_argument("--rounds", type=int, default=6, help="throughput runs per condition")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps of the fixed job")
    parser.add_argument("--submits", type=int, default=50, help="submits per round-trip median")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--backend", choices=sorted(BACKEND_ARGS), default="local",
                        help="where the server runs its jobs (ray: one actor of a local Ray)")
    parser.add_argument("--json", type=Path, default=Path("out/server_bench.json"))
    args = parser.parse_args(argv)

    figures = measure(args.rounds, args.steps, args.submits, args.threads, args.model, args.backend)
    print(json.dumps(figures, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
