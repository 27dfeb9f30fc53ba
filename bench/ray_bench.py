"""The Ray backend's figures (issue 18), against real server processes on loopback ports:

* the front's overhead: bench/server_bench.py's submit round trip and progress-event latency, taken
  on the local backend and on the Ray backend (jobs in one actor of a local Ray);
* what the Ray path adds to each job, by the server's own clocks: from "running" to the engine's first
  step (dispatch to the actor, which also encodes the prompt), and from its last step to "done" (the
  result back through the object store, written, fsynced and recorded); local against Ray, medians;
* throughput: jobs/hour with 1 and 2 local actors (and the local backend with one job at a time), a
  batch of jobs submitted at once on the chosen preset, and the server process's CPU time per job
  (on Ray that is the front's whole share of the work, so it says how many actors one front can serve).

Usage: python -m bench.ray_bench [--model PATH] [--jobs 4] [--actors 1 2] [--preset draft] [--threads 1]
                                  [--rounds 1] [--steps 50] [--submits 10] [--json out/ray_bench.json]
Without --model every server loads the embedded prior (a draft job is a real prop, ~10 s on one
CPU thread). One server per backend and actor count takes all of that row's figures.
Needs Ray: pip install -e ".[ray]".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
from pathlib import Path

from server.client import Client
from server.protocol import Msg, State
from server.testing import ServerProcess

from . import server_bench

log = logging.getLogger(__name__)

PROMPTS = ("a red cube", "a blue sphere", "a green cone", "a yellow torus")


def backend_args(backend: str, actors: int) -> list[str]:
    """The server's flags: ``actors`` Ray actors, or the local backend running one job at a time."""
    return ["--backend", "ray", "--jobs", str(actors)] if backend == "ray" else ["--jobs", "1"]


def job_timings(status: dict, progress_times: list[float]) -> dict:
    """One finished job's times by the server's clocks (all on this machine).

    Args:
        status: its job_status (created, started, finished: when the front queued it, marked it
            running, and recorded it done).
        progress_times: the ``time`` of each of its progress events (when the engine reported the step).
    """
    return {"seconds": status["finished"] - status["started"],
            "dispatch_s": progress_times[0] - status["started"],
            "hand_back_s": status["finished"] - progress_times[-1]}


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) the process has used so far; None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_batch(client: Client, jobs: int, preset: str, server_pid: int | None = None) -> dict:
    """Submit ``jobs`` jobs at once, wait for all; their rate and per-job times.

    Args:
        client: connected to the server under test.
        jobs: how many (prompts and seeds vary, so no two are the same job).
        preset: the jobs' quality preset.
        server_pid: the server's process, whose CPU time per job is taken (on the Ray backend: the
            front's own work; on the local backend the engine's too); None: not taken.
    """
    cpu_before = process_cpu_s(server_pid) if server_pid else None
    job_ids = [client.submit(PROMPTS[n % len(PROMPTS)], preset=preset, seed=n) for n in range(jobs)]
    times: dict[str, list[float]] = {job_id: [] for job_id in job_ids}

    def note(event) -> None:
        if event.type == Msg.PROGRESS:
            times[event.job_id].append(event.header["time"])

    for job_id in job_ids:
        final = client.wait(job_id, on_event=note, timeout=3600)
        if final["state"] != State.DONE:
            raise RuntimeError(f"a benchmark job ended {final['state']}: {final['error']}")
    statuses = [client.status(job_id) for job_id in job_ids]
    per_job = [job_timings(status, times[status["job_id"]]) for status in statuses]
    wall = max(s["finished"] for s in statuses) - min(s["created"] for s in statuses)
    cpu_after = process_cpu_s(server_pid) if cpu_before is not None else None
    return {"jobs": jobs, "wall_s": round(wall, 3), "jobs_per_hour": round(jobs / wall * 3600, 1),
            "progress_events_per_job": round(sum(map(len, times.values())) / jobs, 1),
            "server_cpu_s_per_job": None if cpu_after is None else round((cpu_after - cpu_before) / jobs, 4),
            **{f"median_{key}": round(statistics.median(job[key] for job in per_job), 4)
               for key in ("seconds", "dispatch_s", "hand_back_s")}}


def measure_backend(backend: str, actors: int, jobs: int, preset: str, model: str, threads: int, folder: Path,
                    front: dict | None = None) -> dict:
    """Against a server of its own: ``run_batch``, then (with ``front``) server_bench's figures.

    Args:
        backend: "local" or "ray".
        actors: Ray actors (the local backend runs one job at a time here).
        jobs, preset: the batch.
        model: the prior folder.
        threads: torch threads of the server (of each actor, on Ray).
        folder: where the server keeps its results and log.
        front: server_bench.measure_server's rounds, steps and submits; None: not measured here.
    """
    name = f"{backend}-{actors}"
    server = ServerProcess(model, folder / name, folder / f"{name}.log",
                           ["--threads", str(threads), "--max-per-client", "1000", *backend_args(backend, actors)])
    server.start()
    try:
        row = {"backend": backend, "actors": actors if backend == "ray" else 1,
               **run_batch(server.client(client_id="ray-bench", timeout=60), jobs, preset, server.process.pid)}
        log.info("%s, %d actor(s): %.0f jobs/hour", backend, row["actors"], row["jobs_per_hour"])
        if front is not None:
            row["front"] = server_bench.measure_server(server, **front)
    finally:
        server.stop()
    return row


def ray_cost_per_job(rows: list[dict]) -> dict | None:
    """What one actor adds to each job against the local backend: dispatch plus hand-back, medians."""
    local = next((r for r in rows if r["backend"] == "local"), None)
    ray_one = next((r for r in rows if r["backend"] == "ray" and r["actors"] == 1), None)
    if local is None or ray_one is None:
        return None
    added = (ray_one["median_dispatch_s"] + ray_one["median_hand_back_s"]
             - local["median_dispatch_s"] - local["median_hand_back_s"])
    return {"added_s": round(added, 4), "job_s": ray_one["median_seconds"],
            "share_of_job": round(added / ray_one["median_seconds"], 5)}


def measure(jobs: int = 4, actors: tuple[int, ...] = (1, 2), preset: str = "draft", model: str | None = None,
            threads: int = 1, rounds: int = 1, steps: int = 50, submits: int = 10) -> dict:
    """Every figure of this module, from one server per row: the local backend, then Ray with each of
    ``actors`` (the front's overhead is taken on the local one and on Ray with one actor).

    Args:
        jobs: jobs per throughput batch.
        actors: the actor counts to time, each on a local Ray of as many CPUs times ``threads``.
        preset: the batch jobs' preset.
        model: prior folder; None for the embedded prior.
        threads: torch threads per job (per actor).
        rounds, steps, submits: bench/server_bench.py's settings for the front's overhead.
    """
    from engine.prior import DEFAULT_PRIOR_DIR

    model = model or str(DEFAULT_PRIOR_DIR)
    front = {"rounds": rounds, "steps": steps, "submits": submits}
    with tempfile.TemporaryDirectory(prefix="dreamsmith-ray-bench-") as folder:
        rows = [measure_backend("local", 1, jobs, preset, model, threads, Path(folder), front)]
        rows += [measure_backend("ray", count, jobs, preset, model, threads, Path(folder),
                                 front if count == 1 else None) for count in actors]
    return {"front": {row["backend"]: row.pop("front") for row in rows if "front" in row},
            "throughput": rows, "ray_cost_per_job": ray_cost_per_job(rows),
            "setup": {"jobs": jobs, "preset": preset, "model": model, "threads_per_job": threads,
                      "front_bench": front, "machine": platform.platform(), "python": platform.python_version()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="prior folder for the throughput jobs (default: the embedded prior)")
    parser.add_argument("--jobs", type=int, default=4, help="jobs per throughput batch")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts to time")
    parser.add_argument("--preset", default="draft", help="the throughput jobs' preset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--rounds", type=int, default=1, help="server_bench rounds for the front's overhead")
    parser.add_argument("--steps", type=int, default=50, help="server_bench's fixed job steps")
    parser.add_argument("--submits", type=int, default=10, help="server_bench submits per round-trip median")
    parser.add_argument("--json", type=Path, default=Path("out/ray_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    figures = measure(args.jobs, tuple(args.actors), args.preset, args.model, args.threads, args.rounds, args.steps,
                      args.submits)
    print(json.dumps(figures, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
