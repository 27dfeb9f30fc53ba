"""The engine shares a busy CPU: torch gets half the cores and its idle OpenMP threads sleep, both
set before torch loads, and a user's own settings win."""

import os
import subprocess
import sys

import pytest

from engine.cpu_sharing import available_cores, default_threads

OPENMP_SETTINGS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_SETTINGS}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("entry", ["engine", "server.worker", "bench.run"])
def test_every_entry_point_sets_half_the_cores_and_the_passive_wait_policy_before_torch_loads(entry):
    # server.worker and bench.run import torch themselves; their packages must have set it first.
    code = (f"import {entry}, os, torch; from engine.cpu_sharing import available_cores, default_threads; "
            "print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() == default_threads())")
    assert run_python(code) == "PASSIVE True"


def test_half_the_cores_and_never_fewer_than_one_thread():
    assert [default_threads(cores) for cores in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]


def test_a_users_own_settings_are_kept():
    code = "import engine, os, torch; print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'])"
    assert run_python(code, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="2") == "ACTIVE 2"
    # torch takes it (up to the cores there are)
    threads = run_python("import engine, torch; print(torch.get_num_threads())", OMP_NUM_THREADS="2")
    assert threads == str(min(2, available_cores()))


def test_after_torch_has_loaded_the_setting_is_reported_as_too_late():
    code = "import torch; from engine.cpu_sharing import share_the_cpu; print(share_the_cpu())"
    assert run_python(code) == "False"
