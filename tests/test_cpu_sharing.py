"""The engine shares a busy CPU: torch's OpenMP threads sleep when idle, set before torch loads."""

import os
import subprocess
import sys

import pytest


def policy_after(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("entry", ["engine", "server.worker", "bench.run"])
def test_every_entry_point_sets_the_passive_wait_policy_before_torch_loads(entry):
    # server.worker and bench.run import torch themselves; their packages must have set it first.
    code = f"import {entry}, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert policy_after(code) == "PASSIVE"


def test_a_users_own_wait_policy_is_kept():
    assert policy_after("import engine, os; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_after_torch_has_loaded_the_setting_is_reported_as_too_late():
    code = "import torch; from engine.cpu_sharing import share_the_cpu; print(share_the_cpu())"
    assert policy_after(code) == "False"
