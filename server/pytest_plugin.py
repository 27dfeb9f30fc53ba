"""pytest fixtures that run a real Dreamsmith server process and hand back connected clients.

Registered as the ``dreamsmith`` pytest11 entry point. Fixtures:

* ``dreamsmith_model`` (session): the prior the servers load. Default: a tiny random prior folder
  (engine.testing.save_tiny_prior); ``pytest --dreamsmith-model PATH`` or overriding this fixture
  (session scope) picks another.
* ``dreamsmith_server_args`` (session): extra ``python -m server`` flags for the shared server.
* ``dreamsmith_server`` (session): one server for the whole run, on a free loopback port.
* ``dreamsmith_client``: a Client connected to it with a fresh client id, closed after the test.
* ``dreamsmith_server_factory``: ``start(model=None, extra_args=(), results_dir=None, client_options=None)``
  for tests that need a server of their own (to kill it, restart it or give it other flags);
  ``client_options`` go to every Client made for it (``curve=CurveKeys(...)`` with ``--keys``).
  Stopped after the test.

Every server is a subprocess ``python -m server --bind tcp://127.0.0.1:PORT --model M --results-dir D``,
counted as started once it answers ping, and killed at teardown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.client import Client
from server.testing import ServerProcess


def pytest_addoption(parser):
    parser.getgroup("dreamsmith").addoption(
        "--dreamsmith-model", default=None,
        help="prior folder the dreamsmith server fixtures load (default: a tiny random prior)")


@pytest.fixture(scope="session")
def dreamsmith_model(request, tmp_path_factory) -> str:
    chosen = request.config.getoption("dreamsmith_model")
    if chosen:
        return chosen
    from engine.testing import save_tiny_prior  # torch loads only when a test asks for a server

    return str(save_tiny_prior(tmp_path_factory.mktemp("dreamsmith-prior") / "tiny"))


@pytest.fixture(scope="session")
def dreamsmith_server_args() -> tuple:
    return ()


def _new_server(tmp_path_factory, model: str, extra_args, results_dir=None, client_options=None) -> ServerProcess:
    folder = tmp_path_factory.mktemp("dreamsmith-server")
    return ServerProcess(model, results_dir or folder / "results", folder / "server.log", extra_args, client_options)


@pytest.fixture(scope="session")
def dreamsmith_server(tmp_path_factory, dreamsmith_model, dreamsmith_server_args):
    server = _new_server(tmp_path_factory, dreamsmith_model, dreamsmith_server_args)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def dreamsmith_client(dreamsmith_server):
    client = Client(dreamsmith_server.address)  # a fresh random client id: tests do not share jobs
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def dreamsmith_server_factory(tmp_path_factory, dreamsmith_model):
    started: list[ServerProcess] = []

    def start(model: str | None = None, extra_args=(), results_dir: Path | None = None,
              client_options: dict | None = None) -> ServerProcess:
        server = _new_server(tmp_path_factory, model or dreamsmith_model, extra_args, results_dir, client_options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()
