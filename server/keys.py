"""CurveZMQ keys: making them (``python -m server keys``) and switching the server's socket to CURVE.

Layout of a keys directory::

    server.key, server.key_secret        the server's pair; clients need server.key
    authorized_clients/NAME.key          public keys the server accepts (add or remove files here)
    clients/NAME.key, NAME.key_secret    each client's own pair, to hand to that client

Key files use pyzmq's certificate format, so zmq.auth.load_certificate reads them. Secret files are
created with mode 0600 and never overwritten.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .settings import StartupError

log = logging.getLogger(__name__)

SERVER_NAME = "server"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"
CLIENT_NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"


def _write_certificate(path: Path, public: bytes, secret: bytes | None = None) -> None:
    lines = ["#   ZeroMQ CURVE certificate, written by python -m server keys", "metadata", "curve",
             f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    # O_EXCL: an existing key is never replaced; 0600 from the first byte for secrets.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret is not None else 0o644)
    with os.fdopen(descriptor, "w") as file:
        file.write("\n".join(lines) + "\n")


def _write_pair(folder: Path, name: str) -> bytes:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_certificate(folder / f"{name}.key_secret", public, secret)
    _write_certificate(folder / f"{name}.key", public)
    return public


def create_server_keys(keys_dir: Path) -> Path | None:
    """The server's pair, unless it exists already; returns the public key file it wrote."""
    if (keys_dir / f"{SERVER_NAME}.key_secret").exists():
        return None
    _write_pair(keys_dir, SERVER_NAME)
    (keys_dir / AUTHORIZED_DIR).mkdir(mode=0o700, exist_ok=True)
    return keys_dir / f"{SERVER_NAME}.key"


def create_client_keys(keys_dir: Path, name: str) -> Path:
    """A client's pair under clients/, and its public key under authorized_clients/; returns the secret file."""
    if (keys_dir / CLIENTS_DIR / f"{name}.key_secret").exists():
        raise FileExistsError(f"client {name!r} already has keys in {keys_dir / CLIENTS_DIR}")
    public = _write_pair(keys_dir / CLIENTS_DIR, name)
    (keys_dir / AUTHORIZED_DIR).mkdir(mode=0o700, exist_ok=True)
    _write_certificate(keys_dir / AUTHORIZED_DIR / f"{name}.key", public)
    return keys_dir / CLIENTS_DIR / f"{name}.key_secret"


def check_keys_dir(keys_dir: Path) -> str | None:
    """Why this directory cannot serve CURVE, or None when it can."""
    secret = keys_dir / f"{SERVER_NAME}.key_secret"
    if not secret.is_file():
        return f"{secret} is missing; make keys with: python -m server keys --dir {keys_dir} --client NAME"
    if not (keys_dir / AUTHORIZED_DIR).is_dir():
        return f"{keys_dir / AUTHORIZED_DIR} is missing; add clients with: python -m server keys --dir {keys_dir} " \
               "--client NAME"
    return None


def make_curve_server(socket: zmq.Socket, keys_dir: Path) -> None:
    try:
        public, secret = zmq.auth.load_certificate(keys_dir / f"{SERVER_NAME}.key_secret")
    except (OSError, ValueError) as error:
        raise StartupError(f"cannot read the server keys in {keys_dir}: {error}") from None
    if secret is None:
        raise StartupError(f"{keys_dir / (SERVER_NAME + '.key_secret')} holds no secret key")
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True


def start_authenticator(context: zmq.Context, keys_dir: Path) -> ThreadAuthenticator:
    """ZAP handler that admits exactly the public keys in authorized_clients/ (read at start-up)."""
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys_dir / AUTHORIZED_DIR))
    log.info("CurveZMQ on: %d authorised client keys", len(list((keys_dir / AUTHORIZED_DIR).glob("*.key"))))
    return authenticator
