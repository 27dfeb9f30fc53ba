"""Command line: ``python -m server [options]`` serves; ``python -m server keys --dir DIR`` makes CurveZMQ keys.

Flags are checked before anything heavy is imported, so a bad one costs a second, not a model load.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .keys import CLIENT_NAME_PATTERN, check_keys_dir, create_client_keys, create_server_keys
from .protocol import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from .settings import Settings, StartupError

PROG = "python -m server"
DEFAULT_RESULTS_DIR = Path.home() / ".local" / "share" / "dreamsmith" / "results"
TCP_ENDPOINT = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>\d{1,5})")
IPC_ENDPOINT = re.compile(r"ipc://.+")
# Jobs run at once when --jobs is not given. A CPU is busy with one job already; on a GPU one job
# leaves it mostly idle, and four share each step's U-Net forward (engine.batching).
DEFAULT_JOBS = {"cpu": 1, "cuda": 4}
MAX_JOBS = 64
BACKENDS = ("local", "ray")
# What `ray start --head` prints for others to join (HOST:PORT), a Ray Client URL, or "auto" (the
# cluster this machine is part of).
RAY_ADDRESS = re.compile(r"auto|(ray://)?(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):\d{1,5}")


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags get one line on stderr and exit code 2 (engine.cli has the same rule; importing it
    would load torch before a single flag is checked)."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{PROG}: error: {message}\n")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def serve_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=PROG, description="Dreamsmith job server (ZeroMQ ROUTER). "
                                f"Also: {PROG} keys --dir DIR [--client NAME] makes CurveZMQ keys.")
    parser.add_argument("--bind", default=DEFAULT_ADDRESS, help=f"ZeroMQ endpoint (default {DEFAULT_ADDRESS}); "
                        "anything but loopback or ipc:// needs --keys")
    parser.add_argument("--model", help="prior folder or cached Hugging Face id (default: the embedded prior)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the engine runs")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help=f"results and the job table (default {DEFAULT_RESULTS_DIR})")
    parser.add_argument("--keys", type=Path, help="CurveZMQ keys directory; turns encryption and client "
                        "authentication on")
    parser.add_argument("--max-queued", type=_positive, default=32, help="jobs waiting, all clients (default 32)")
    parser.add_argument("--max-per-client", type=_positive, default=4,
                        help="unfinished jobs per client (default 4)")
    parser.add_argument("--max-message-mb", type=_positive, default=DEFAULT_MAX_MESSAGE_BYTES // 2**20,
                        help="largest request in MiB (default %(default)s)")
    parser.add_argument("--threads", type=_positive, help="torch CPU threads, in each Ray actor too (default: "
                        "torch's choice)")
    defaults = ", ".join(f"{jobs} on {device}" for device, jobs in DEFAULT_JOBS.items())
    parser.add_argument("--jobs", type=_positive, help="jobs run at once, sharing one loaded prior and one U-Net "
                        f"forward per step (default: {defaults}); with --backend ray, the number of Ray actors "
                        "(default: 1 on cpu, one per GPU of the cluster on cuda)")
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="where jobs run: in this process (local, the default) or in Ray actors, one loaded "
                        "prior each (ray; needs pip install -e '.[ray]')")
    parser.add_argument("--ray-address", help="with --backend ray: the cluster to join (HOST:PORT of its head, as "
                        "`ray start --head` prints it, or auto); default: start a local Ray on this machine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def keys_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=f"{PROG} keys", description="Make the server's CurveZMQ keys (once) and, "
                                "with --client, a key pair for one client, authorised at once.")
    parser.add_argument("--dir", type=Path, required=True, help="keys directory (created if missing)")
    parser.add_argument("--client", help="name of a client to make keys for")
    return parser


def is_local(bind: str) -> bool:
    """Loopback TCP or ipc:// (a file, guarded by its permissions)."""
    if IPC_ENDPOINT.fullmatch(bind):
        return True
    host = TCP_ENDPOINT.fullmatch(bind).group("host").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name, a wildcard or a host name: not provably loopback
        return False


def _check_writable(parser: argparse.ArgumentParser, folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dreamsmith-write-test-"):
            pass
    except OSError as error:
        parser.error(f"cannot write the results directory {str(folder)!r}: {error.strerror or error}")
    return folder


def settings_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    tcp = TCP_ENDPOINT.fullmatch(args.bind)
    if not (tcp or IPC_ENDPOINT.fullmatch(args.bind)) or (tcp and not 1 <= int(tcp.group("port")) <= 65535):
        parser.error(f"--bind must look like tcp://HOST:PORT or ipc://PATH, got {args.bind!r}")
    if args.keys is None and not is_local(args.bind):
        parser.error(f"binding to {args.bind} (not loopback) needs CurveZMQ: pass --keys DIR "
                     f"(make them with: {PROG} keys --dir DIR --client NAME)")
    if args.keys is not None and (problem := check_keys_dir(args.keys)):
        parser.error(problem)
    if args.jobs is not None and args.jobs > MAX_JOBS:
        parser.error(f"--jobs must be at most {MAX_JOBS}, got {args.jobs}")
    _check_backend(parser, args)
    return Settings(bind=args.bind, model=args.model, device=args.device,
                    results_dir=_check_writable(parser, args.results_dir), keys_dir=args.keys,
                    max_queued=args.max_queued, max_per_client=args.max_per_client,
                    max_message_bytes=args.max_message_mb * 2**20, threads=args.threads,
                    jobs=args.jobs or _default_jobs(args), backend=args.backend, ray_address=args.ray_address)


def _check_backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ray_address is not None and args.backend != "ray":
        parser.error("--ray-address needs --backend ray")
    if args.ray_address is not None and not RAY_ADDRESS.fullmatch(args.ray_address):
        parser.error(f"--ray-address must look like HOST:PORT (as `ray start --head` prints it) or auto, "
                     f"got {args.ray_address!r}")
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        parser.error("--backend ray needs Ray, which is not installed: pip install -e '.[ray]'")


def _default_jobs(args: argparse.Namespace) -> int | None:
    """Jobs at once when --jobs is not given. On Ray with CUDA the cluster decides (one actor per
    GPU), which only its start-up can tell; on Ray without CUDA, one actor."""
    if args.backend == "ray":
        return None if args.device == "cuda" else 1
    return DEFAULT_JOBS[args.device]


def run_keys(argv: list[str]) -> int:
    parser = keys_parser()
    args = parser.parse_args(argv)
    if args.client is not None and not re.fullmatch(CLIENT_NAME_PATTERN, args.client):
        parser.error(f"--client must match {CLIENT_NAME_PATTERN}, got {args.client!r}")
    try:
        server_public = create_server_keys(args.dir)
        client_secret = create_client_keys(args.dir, args.client) if args.client else None
    except OSError as error:
        parser.error(str(error))
    if server_public:
        print(f"server keys: {server_public} (give this file to clients) and its .key_secret (keep it here)")
    if client_secret:
        print(f"client {args.client}: give it {client_secret} and {args.dir / 'server.key'}; "
              "it is authorised already")
    return 0


def run_server(argv: list[str]) -> int:
    parser = serve_parser()
    args = parser.parse_args(argv)
    settings = settings_from(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import serve  # torch and the engine load here, once the flags have passed

    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    try:
        serve(settings, stop)
    except StartupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_keys(argv[1:]) if argv[:1] == ["keys"] else run_server(argv)
