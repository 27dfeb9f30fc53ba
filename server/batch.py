"""``python -m server.batch PROMPTS --out DIR``: every line of a prompts file as a job on a running server,
one GLB per line, resumable.

PROMPTS is a text file with one prompt per line (blank lines and ``#`` comments ignored), or a ``.csv``
file whose header has a ``prompt`` column and optionally ``seed``, ``task`` (generate, paint or sketch)
and ``mesh`` (the mesh file paint and sketch start from, relative to the CSV's folder; read when its
line is submitted, so an unreadable one fails that line only). Line N becomes
``DIR/NNN_<prompt>_s<seed>.glb``; a line whose GLB is already there, whole, is skipped, so a re-run
finishes only what is missing. The output is one progress bar for the whole batch, a line per failed
job, and a summary line.

Exit codes: 0 every job done (or skipped), 1 some failed, 2 a bad input file or no server, 130 Ctrl-C
(the jobs this run submitted are cancelled first).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import re
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .client import CHECK_EVERY_S, Client, CurveKeys, NoServer, ServerError, ServerTimeout
from .protocol import DEFAULT_ADDRESS, JOB_KINDS, MAX_SEED, PARAMS, PRESETS, Code, Message, Msg, ProtocolError, State

log = logging.getLogger(__name__)

PROG = "python -m server.batch"
DEFAULT_SEED = 0  # the engine's own default, sent explicitly so that the file name tells the truth
SLUG_CHARS = 60  # the prompt's share of a file name
QUEUE_FULL_RETRY_S = 2.0  # the server's queue is full of other clients' jobs: ask again this often
CANCEL_TIMEOUT_S = 2.0  # per job, on Ctrl-C: the user wants out, not a long wait
# How much of a job each engine phase is, for a bar that moves smoothly through a job: the
# optimisation's steps, then the one-step mesh extraction, then the colour stage.
PHASE_SPANS = {"optimise": (0.0, 0.8), "mesh": (0.8, 0.85), "colour": (0.85, 1.0)}
GLB_MAGIC, GLB_VERSION, GLB_JSON_CHUNK = b"glTF", 2, b"JSON"


class InputError(ValueError):
    """A prompts file the batch cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class BatchLine:
    """One job of the batch: where it comes from in the prompts file and what it asks for."""

    number: int  # line number in the prompts file, from 1
    prompt: str
    seed: int
    task: str = "generate"
    mesh: Path | None = None  # paint and sketch: the mesh file they start from

    @property
    def file_name(self) -> str:
        task = "" if self.task == "generate" else f"{self.task}_"
        return f"{self.number:03d}_{task}{slug(self.prompt)}_s{self.seed}.glb"

    def describe(self) -> str:
        return f"line {self.number} ({self.prompt!r})"


def slug(prompt: str) -> str:
    """The prompt as a file-name fragment: lower case, runs of anything else than letters and digits
    become one underscore; ``prompt`` when nothing is left."""
    words = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return words[:SLUG_CHARS].rstrip("_") or "prompt"


# ---------------------------------------------------------------------------------------------
# Reading the prompts file


def read_batch(path: Path, default_seed: int) -> list[BatchLine]:
    """The batch's lines, every one checked; raises InputError for a file that cannot run.

    Args:
        path: a text file (one prompt per line) or a ``.csv`` file with a ``prompt`` column.
        default_seed: the seed of lines that give none.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no prompts file at {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {str(path)!r}: {getattr(error, 'strerror', None) or error}") from None
    lines = read_csv(text, path.parent, default_seed) if path.suffix.lower() == ".csv" \
        else read_text(text, default_seed)
    if not lines:
        raise InputError(f"{str(path)!r} holds no prompts")
    return lines


def read_text(text: str, default_seed: int) -> list[BatchLine]:
    """One prompt per line; blank lines and lines starting with ``#`` are left out."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        prompt = raw.strip()
        if prompt and not prompt.startswith("#"):
            lines.append(BatchLine(number, prompt, default_seed))
    return lines


def read_csv(text: str, folder: Path, default_seed: int) -> list[BatchLine]:
    """Rows of a CSV with a header naming a ``prompt`` column and optional ``seed``, ``task`` and ``mesh``."""
    reader = csv.DictReader(text.splitlines())
    columns = [name.strip().lower() for name in reader.fieldnames or []]
    if "prompt" not in columns:
        raise InputError(f"the CSV header must name a prompt column (it has: {', '.join(columns) or 'nothing'})")
    reader.fieldnames = columns  # so that " Prompt" finds the prompt column too
    lines = []
    for row in reader:
        cells = {name: (value or "").strip() for name, value in row.items() if name is not None}
        if cells["prompt"] and not cells["prompt"].startswith("#"):
            lines.append(csv_line(reader.line_num, cells, folder, default_seed))
        elif any(cells.values()) and not cells["prompt"]:
            raise InputError(f"line {reader.line_num}: the prompt is empty")
    return lines


def csv_line(number: int, cells: dict[str, str], folder: Path, default_seed: int) -> BatchLine:
    seed = parse_seed(cells["seed"], number) if cells.get("seed") else default_seed
    task = cells.get("task") or "generate"
    if task not in JOB_KINDS:
        raise InputError(f"line {number}: unknown task {task!r} (use one of: {', '.join(JOB_KINDS)})")
    mesh = folder / cells["mesh"] if cells.get("mesh") else None
    if task == "generate" and mesh is not None:
        raise InputError(f"line {number}: a generate line takes no mesh (use task paint or sketch)")
    if task != "generate" and mesh is None:
        raise InputError(f"line {number}: task {task} needs a mesh file in the mesh column")
    if mesh is not None and not mesh.is_file():
        raise InputError(f"line {number}: no mesh file at {str(mesh)!r}")
    return BatchLine(number, cells["prompt"], seed, task, mesh)


def parse_seed(text: str, number: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEED:
        raise InputError(f"line {number}: the seed must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return int(text)


def job_params(line: BatchLine, options: dict) -> dict:
    """What the line's job is submitted with, checked against the protocol so that a value the server
    would refuse is an error before anything is submitted.

    Args:
        line: the batch line.
        options: params every job gets (preset, steps, strict, --param).
    """
    params = {**options, "prompt": line.prompt, "seed": line.seed}
    try:
        return PARAMS[line.task].check(params, "params")
    except ProtocolError as error:
        raise InputError(f"{line.describe()}: {error.message}") from None


# ---------------------------------------------------------------------------------------------
# Results on disk


def is_complete_glb(path: Path) -> bool:
    """Whether ``path`` is a whole GLB: its header's magic and version, a JSON chunk first, and a
    stated length equal to the file's (what a half-written file lacks)."""
    try:
        with path.open("rb") as file:
            header = file.read(20)
        size = path.stat().st_size
    except OSError:
        return False
    if len(header) < 20:
        return False
    magic, version, length, _, chunk_type = struct.unpack("<4sIII4s", header)
    return magic == GLB_MAGIC and version == GLB_VERSION and length == size and chunk_type == GLB_JSON_CHUNK


def mesh_inputs(path: Path) -> dict:
    """A paint or sketch line's mesh file as the arrays a submit carries."""
    from engine.meshes import load_mesh  # the engine's reader: the same files the engine's CLI takes

    mesh = load_mesh(path)
    arrays = {"vertices": mesh.vertices, "faces": mesh.faces}
    return arrays if mesh.uvs is None else {**arrays, "uvs": mesh.uvs}


# ---------------------------------------------------------------------------------------------
# The progress bar


class BatchProgress:
    """One tqdm bar for the whole batch, in jobs: a running job adds the share of it its progress
    events say is done, so the bar moves with every step, not only when a job ends."""

    def __init__(self, jobs: int):
        self.bar = tqdm(total=jobs, unit="job", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} jobs [{elapsed}<{remaining}{postfix}]")
        self.finished = 0
        self.shares: dict[str, float] = {}  # job id -> share of it done

    def job_progress(self, job_id: str, phase: str, step: int, total: int) -> None:
        start, end = PHASE_SPANS.get(phase, (0.0, 0.0))
        share = start + (end - start) * min(step / max(total, 1), 1.0)
        self.shares[job_id] = max(self.shares.get(job_id, 0.0), share)
        self._redraw()

    def job_finished(self, job_id: str | None, done: int, failed: int) -> None:
        self.shares.pop(job_id, None)
        self.finished += 1
        self.bar.set_postfix_str(f"{done} done, {failed} failed", refresh=False)
        self._redraw()

    def _redraw(self) -> None:
        self.bar.update(self.finished + sum(self.shares.values()) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------
# Running the batch


@dataclass
class Tally:
    """How the batch's lines ended, for the summary line."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: int = 0

    def summary(self, out_dir: Path) -> str:
        cancelled = f", {self.cancelled} cancelled" if self.cancelled else ""
        return f"{self.done} done, {self.skipped} skipped, {self.failed} failed{cancelled}: {out_dir}"


@dataclass
class BatchRun:
    """Submits the lines to a server, at most the server's per-client limit at a time, and writes
    each finished job's GLB."""

    client: Client
    out_dir: Path
    options: dict
    tally: Tally = field(default_factory=Tally)
    in_flight: dict[str, BatchLine] = field(default_factory=dict)  # job id -> its line
    progress: BatchProgress | None = None

    def run(self, lines: list[BatchLine]) -> Tally:
        """Every line whose GLB is missing, as jobs; returns the tally. KeyboardInterrupt passes
        through, with the jobs in flight left for ``cancel_in_flight``.

        Args:
            lines: the batch, checked by read_batch.
        """
        pending = deque(line for line in lines if not is_complete_glb(self.out_dir / line.file_name))
        self.tally.skipped = len(lines) - len(pending)
        if not pending:
            return self.tally
        limit = max(1, self.client.limits["max_per_client"])
        self.progress = BatchProgress(len(pending))
        retry_at, heard = 0.0, time.monotonic()
        while pending or self.in_flight:
            if time.monotonic() >= retry_at and not self._submit_up_to(limit, pending):
                retry_at = time.monotonic() + QUEUE_FULL_RETRY_S
            events = self.client.poll_events(timeout=0.5 if self.in_flight else QUEUE_FULL_RETRY_S)
            for event in events:
                self._handle(event)
            if events:
                heard = time.monotonic()
            elif time.monotonic() - heard >= CHECK_EVERY_S:
                self._check_silent_jobs()  # events can be lost; the server's table cannot
                heard = time.monotonic()
        return self.tally

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def _submit_up_to(self, limit: int, pending: deque[BatchLine]) -> bool:
        """Submit while the limit allows; False when the server's queue is full for now."""
        while pending and len(self.in_flight) < limit:
            line = pending.popleft()
            try:
                self.in_flight[self._submit(line)] = line
            except ServerError as error:
                if error.code == Code.QUEUE_FULL:
                    pending.appendleft(line)
                    return False
                self._fail(None, line, f"refused: {error}")
            except ValueError as error:  # the engine's MeshError: a mesh file it cannot read
                self._fail(None, line, f"cannot read its mesh: {error}")
        return True

    def _submit(self, line: BatchLine) -> str:
        params = job_params(line, self.options)
        inputs = mesh_inputs(line.mesh) if line.mesh is not None else None
        return self.client.submit(params.pop("prompt"), kind=line.task, inputs=inputs, **params)

    def _handle(self, event: Message) -> None:
        line = self.in_flight.get(event.job_id)
        if line is None:
            return  # a late event of a job already finished
        if event.type == Msg.PROGRESS:
            header = event.header
            self.progress.job_progress(event.job_id, header["phase"], header["step"], header["total"])
        elif event.type == Msg.WARNING:
            log.warning("%s: %s", line.describe(), event.header["message"])
        elif event.type == Msg.STATE and event.header["state"] in State.TERMINAL:
            self._finish(event.job_id, event.header)

    def _check_silent_jobs(self) -> None:
        for job_id in list(self.in_flight):
            status = self.client.attach(job_id)
            if status["state"] in State.TERMINAL:
                self._finish(job_id, status)

    def _finish(self, job_id: str, final: dict) -> None:
        line = self.in_flight.pop(job_id)
        if final["state"] != State.DONE:
            error = final.get("error") or {}
            return self._fail(job_id, line, f"{final['state']}: {error.get('code')}: {error.get('message')}")
        try:
            self.client.fetch(job_id).save_glb(self.out_dir / line.file_name)  # a temp file, then a rename
        except ServerError as error:
            return self._fail(job_id, line, f"cannot fetch its result: {error}")
        self.tally.done += 1
        self.progress.job_finished(job_id, self.tally.done, self.tally.failed)

    def _fail(self, job_id: str | None, line: BatchLine, reason: str) -> None:
        log.error("%s failed: %s", line.describe(), reason)
        self.tally.failed += 1
        self.progress.job_finished(job_id, self.tally.done, self.tally.failed)

    def cancel_in_flight(self) -> None:
        """Cancel every job this run submitted that has not ended; a job the server cannot be asked
        about is left to finish on its own."""
        for job_id, line in list(self.in_flight.items()):
            try:
                self.client.cancel(job_id, timeout=CANCEL_TIMEOUT_S)
                self.tally.cancelled += 1
            except (ServerError, ServerTimeout) as error:
                log.warning("%s: could not cancel job %s: %s", line.describe(), job_id, error)
        self.in_flight.clear()


# ---------------------------------------------------------------------------------------------
# Command line


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags get one line on stderr and exit code 2, as the server's and the engine's commands."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{PROG}: error: {message}\n")


def parse_param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an integer, a number, true/false, or else text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, got {text!r}")
    for convert in (int, float):
        with contextlib.suppress(ValueError):
            return key.strip(), convert(value)
    return key.strip(), {"true": True, "false": False}.get(value.lower(), value)


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def batch_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog=PROG, description="Run every prompt of a file on a running Dreamsmith "
                                "server; one GLB per line in --out, and a re-run finishes only what is missing.")
    parser.add_argument("prompts", type=Path, help="text file, one prompt per line (# comments), or a .csv "
                        "with a prompt column and optional seed, task (generate, paint, sketch) and mesh columns")
    parser.add_argument("--out", type=Path, required=True, help="folder for the GLBs (created if missing)")
    parser.add_argument("--preset", choices=PRESETS, help="quality preset of every job (server default: standard)")
    parser.add_argument("--steps", type=int, help="optimisation steps of every job (default: the preset's)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of lines without one (default 0)")
    parser.add_argument("--strict", action="store_true", help="refuse prompts with words the prior does not know")
    parser.add_argument("--param", type=parse_param, action="append", default=[], metavar="KEY=VALUE",
                        help="any other job param of the protocol, e.g. texture_size=512 (repeatable)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server endpoint (default {DEFAULT_ADDRESS})")
    parser.add_argument("--keys", nargs=2, type=Path, metavar=("SERVER_KEY", "CLIENT_SECRET"),
                        help="CurveZMQ: the server's server.key and this client's NAME.key_secret")
    parser.add_argument("--timeout", type=positive_seconds, default=10.0,
                        help="seconds to wait for each reply (default 10)")
    return parser


def common_options(args: argparse.Namespace) -> dict:
    options = dict(args.param)
    for name in ("preset", "steps"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.strict:
        options["strict"] = True
    return options


def prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[BatchLine], dict]:
    """The checked lines and common job params, or a one-line exit before anything is submitted."""
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")
    options = common_options(args)
    try:
        lines = read_batch(args.prompts, args.seed)
        for line in lines:
            job_params(line, options)
        args.out.mkdir(parents=True, exist_ok=True)
    except InputError as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(f"cannot make the output folder {str(args.out)!r}: {error.strerror or error}")
    return lines, options


def connect(parser: argparse.ArgumentParser, args: argparse.Namespace, lines: list[BatchLine]) -> Client:
    """A client that has said hello to a server able to run every line's task."""
    try:
        curve = CurveKeys.from_files(*args.keys) if args.keys else None
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the --keys files: {error}")
    client = Client(args.address, timeout=args.timeout, curve=curve)
    try:
        kinds = client.hello()["kinds"]
    except NoServer as error:
        client.close()
        parser.error(str(error))
    unsupported = next((line for line in lines if line.task not in kinds), None)
    if unsupported is not None:
        client.close()
        parser.error(f"{unsupported.describe()}: the server does not run {unsupported.task} jobs "
                     f"(it runs: {', '.join(kinds)})")
    return client


def main(argv: list[str] | None = None) -> int:
    """Run a batch; returns the exit code (0 all done, 1 some failed, 2 bad input or no server, 130 Ctrl-C).

    Args:
        argv: the command's arguments (default: sys.argv[1:]).
    """
    parser = batch_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lines, options = prepare(parser, args)
    client = connect(parser, args, lines)
    batch = BatchRun(client, args.out, options)
    try:
        with logging_redirect_tqdm():  # failure lines above the bar, not inside it
            batch.run(lines)
    except KeyboardInterrupt:
        batch.cancel_in_flight()
        return finish(batch, args.out, 130)
    except ServerTimeout as error:  # the server went away mid-batch: a re-run picks up from here
        log.error("%s: %s", PROG, error)
        return finish(batch, args.out, 1)
    finally:
        client.close()
    return finish(batch, args.out, 1 if batch.tally.failed else 0)


def finish(batch: BatchRun, out_dir: Path, code: int) -> int:
    batch.close()
    print(batch.tally.summary(out_dir), flush=True)  # the command's last line: what it did
    return code


if __name__ == "__main__":
    sys.exit(main())
