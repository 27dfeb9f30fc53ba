"""The job table on disk (SQLite): what every job is, whose it is and how it ended, across restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .protocol import Code, State

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error_code TEXT,
    error_message TEXT,
    error_field TEXT
)
"""
INTERRUPTED_MESSAGE = "the server stopped before this job finished; submit it again"


@dataclass(frozen=True)
class JobRecord:
    id: str
    client: str
    kind: str
    state: str
    created: float
    started: float | None
    finished: float | None
    error: dict | None  # {"code", "message", "field"} for failed, cancelled and interrupted jobs


class JobStore:
    """One connection shared by the I/O and worker threads; every write is committed (and synced) at once."""

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job the client was told about survives power loss
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, *args) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def insert(self, job_id: str, client: str, kind: str, params: dict, created: float) -> None:
        self._write("INSERT INTO jobs (id, client, kind, params, state, created) VALUES (?, ?, ?, ?, ?, ?)",
                    job_id, client, kind, json.dumps(params), State.QUEUED, created)

    def mark_running(self, job_id: str, when: float) -> None:
        self._write("UPDATE jobs SET state = ?, started = ? WHERE id = ?", State.RUNNING, when, job_id)

    def mark_finished(self, job_id: str, state: str, when: float, error: dict | None = None) -> None:
        error = error or {}
        self._write("UPDATE jobs SET state = ?, finished = ?, error_code = ?, error_message = ?, error_field = ? "
                    "WHERE id = ?", state, when, error.get("code"), error.get("message"), error.get("field"),
                    job_id)

    def interrupt_unfinished(self, when: float) -> list[str]:
        """At start-up: jobs left queued or running by a server that died are reported, not dropped."""
        with self._lock:
            unfinished = self._db.execute("SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY rowid",
                                          (State.QUEUED, State.RUNNING))
            ids = [row[0] for row in unfinished]
            self._db.execute("UPDATE jobs SET state = ?, finished = ?, error_code = ?, error_message = ? "
                             "WHERE state IN (?, ?)", (State.INTERRUPTED, when, Code.WORKER_CRASHED,
                                                       INTERRUPTED_MESSAGE, State.QUEUED, State.RUNNING))
        return ids

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, client, kind, state, created, started, finished, error_code, "
                                   "error_message, error_field FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        *fields, code, message, field = row
        error = {"code": code, "message": message, "field": field} if code else None
        return JobRecord(*fields, error)
