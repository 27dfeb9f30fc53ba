"""How the engine shares a busy CPU: one prop alone, beside a busy single-thread loop (think Blender
working), and two engine processes side by side, each as its own ``python -m engine generate``.

Usage: python -m bench.contention [--preset standard] [--prompt "a blue cube"] [--seed 3]
       [--wait-policy PASSIVE|ACTIVE] [--threads N]

Prints JSON: each case's wall times and their ratios to the time alone. ``--wait-policy ACTIVE
--threads 2`` measures what the engine did on 2 cores before it chose OpenMP's settings itself
(engine.cpu_sharing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.cpu_sharing import available_cores, default_threads

log = logging.getLogger(__name__)

BUSY_LOOP = "while True: pass"


def _engine_command(prompt: str, preset: str, seed: int, output: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "generate", prompt, "-o", str(output), "--preset", preset,
            "--seed", str(seed)]


def _run_together(commands: list[list[str]], env: dict) -> list[float]:
    """Start every command at once; each one's wall time in seconds."""
    began = time.perf_counter()
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    times = [0.0] * len(processes)
    pending = set(range(len(processes)))
    while pending:
        for index in list(pending):
            if processes[index].poll() is not None:
                times[index] = time.perf_counter() - began
                pending.discard(index)
                if processes[index].returncode != 0:
                    raise RuntimeError(f"{' '.join(commands[index])} failed: {processes[index].stderr.read()[-500:]!r}")
        time.sleep(0.05)
    return times


def measure(prompt: str = "a blue cube", preset: str = "standard", seed: int = 3,
            wait_policy: str | None = None, threads: int | None = None) -> dict:
    """Wall times of the three cases and their ratios to the time alone.

    Args:
        prompt: the prop each engine process makes.
        preset: its quality preset.
        seed: its seed.
        wait_policy: ``OMP_WAIT_POLICY`` for the engine processes; None leaves the engine's own choice.
        threads: their ``OMP_NUM_THREADS``; None leaves the engine's own choice.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as folder:
        first, second = (_engine_command(prompt, preset, seed, Path(folder) / f"prop{i}.glb") for i in (1, 2))
        alone = _run_together([first], env)[0]
        log.info("alone: %.1f s", alone)
        loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            beside_busy = _run_together([first], env)[0]
        finally:
            loop.kill()
            loop.wait()
        log.info("beside a busy thread: %.1f s", beside_busy)
        pair = _run_together([first, second], env)
        log.info("two side by side: %.1f s, %.1f s", *pair)
    return {"prompt": prompt, "preset": preset, "seed": seed, "wait_policy": wait_policy or "engine default",
            "threads": threads or default_threads(), "cpus": available_cores(),
            "alone_s": alone, "beside_busy_thread_s": beside_busy, "two_side_by_side_s": pair,
            "beside_busy_thread_ratio": beside_busy / alone, "two_side_by_side_ratio": max(pair) / alone}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default="a blue cube")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--wait-policy", choices=["PASSIVE", "ACTIVE"], help="override the engine's OpenMP policy")
    parser.add_argument("--threads", type=int, help="override the engine's torch thread count")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = measure(args.prompt, args.preset, args.seed, args.wait_policy, args.threads)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
