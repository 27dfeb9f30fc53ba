import pytest
import torch

from engine.cpu_sharing import default_threads
from engine.testing import save_tiny_prior, tiny_prior


@pytest.fixture(autouse=True)
def _engine_threads():
    """The engine's own thread count (engine.cpu_sharing), restored for every test."""
    torch.set_num_threads(default_threads())


@pytest.fixture(scope="session")
def tiny():
    """The tiny random epsilon-prediction prior, built in memory."""
    return tiny_prior("epsilon")


@pytest.fixture(scope="session")
def tiny_v():
    return tiny_prior("v_prediction")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny prior written as a diffusers folder, for the on-disk loading path and the CLI."""
    return save_tiny_prior(tmp_path_factory.mktemp("prior") / "tiny")
