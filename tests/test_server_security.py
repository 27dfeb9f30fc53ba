"""Start-up checks, CurveZMQ keys, and who the server lets in."""

import stat
import subprocess
import sys

import pytest
import zmq

from server.cli import main, serve_parser, settings_from
from server.client import Client, CurveKeys, ServerTimeout
from server.keys import AUTHORIZED_DIR, CLIENTS_DIR, create_client_keys, create_server_keys
from server.testing import free_port


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--bind", "tcp://0.0.0.0:5999"], "needs CurveZMQ"),
    (["--bind", "tcp://192.168.1.10:5999"], "needs CurveZMQ"),
    (["--bind", "tcp://eth0:5999"], "needs CurveZMQ"),
    (["--bind", "localhost:5999"], "--bind must look like"),
    (["--bind", "tcp://127.0.0.1:99999"], "--bind must look like"),
    (["--max-queued", "0"], "must be a positive whole number"),
    (["--max-per-client", "many"], "must be a positive whole number"),
    (["--device", "tpu"], "invalid choice"),
    (["--jobs", "0"], "must be a positive whole number"),
    (["--jobs", "65"], "--jobs must be at most 64"),
    (["--keys", "{tmp}/no-keys"], "server.key_secret is missing"),
    (["--results-dir", "/proc/dreamsmith"], "cannot write the results directory"),
])
def test_bad_flags_get_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, err = run_cli(capsys, "--results-dir", str(tmp_path), *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, jobs", [([], 1), (["--device", "cuda"], 4), (["--device", "cuda", "--jobs", "2"], 2),
                                        (["--jobs", "3"], 3)])
def test_jobs_at_once_default_to_one_on_a_cpu_and_four_on_a_gpu(tmp_path, args, jobs):
    parser = serve_parser()
    assert settings_from(parser, parser.parse_args(["--results-dir", str(tmp_path), *args])).jobs == jobs


def test_a_server_asked_to_listen_beyond_loopback_without_keys_refuses_to_start(tmp_path):
    started = subprocess.run([sys.executable, "-m", "server", "--bind", f"tcp://0.0.0.0:{free_port()}",
                              "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert "not loopback" in started.stderr and "--keys" in started.stderr


def test_a_missing_model_is_one_line_and_exit_2(tmp_path):
    started = subprocess.run([sys.executable, "-m", "server", "--bind", f"tcp://127.0.0.1:{free_port()}",
                              "--model", str(tmp_path / "no-such-model"), "--results-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 2
    last_line = started.stderr.strip().splitlines()[-1]
    assert last_line.startswith("python -m server: error:") and "no model at" in last_line


def test_the_keys_command_writes_private_secrets_and_never_overwrites(capsys, tmp_path):
    keys = tmp_path / "keys"
    assert main(["keys", "--dir", str(keys), "--client", "alice"]) == 0
    server_secret = (keys / "server.key_secret").read_bytes()
    for secret in (keys / "server.key_secret", keys / CLIENTS_DIR / "alice.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (keys / AUTHORIZED_DIR / "alice.key").is_file()
    assert not list((keys / AUTHORIZED_DIR).glob("*secret*"))
    capsys.readouterr()
    code, err = run_cli(capsys, "keys", "--dir", str(keys), "--client", "alice")
    assert code == 2 and "already has keys" in err
    assert main(["keys", "--dir", str(keys), "--client", "bob"]) == 0
    assert (keys / "server.key_secret").read_bytes() == server_secret


def test_curve_admits_authorised_keys_only(dreamsmith_server_factory, tmp_path):
    keys = tmp_path / "keys"
    create_server_keys(keys)
    alice_secret = create_client_keys(keys, "alice")
    alice_keys = CurveKeys.from_files(keys / "server.key", alice_secret)
    server = dreamsmith_server_factory(extra_args=["--keys", str(keys)], client_options={"curve": alice_keys})

    alice = server.client(client_id="claims-to-be-bob")
    assert alice.hello()["identity"] == alice_keys.client_public.decode()  # the key, not the claimed id
    assert alice.status()["jobs"] == []

    stranger_public, stranger_secret = zmq.curve_keypair()
    stranger_keys = CurveKeys(alice_keys.server_public, stranger_public, stranger_secret)
    for curve in (stranger_keys, None):  # an unknown key, and no encryption at all
        with Client(server.address, curve=curve, timeout=2) as outsider:
            with pytest.raises(ServerTimeout):
                outsider.ping()
    assert server.process.poll() is None
