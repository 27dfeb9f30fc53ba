"""The list of recent jobs, kept in a JSON file so a job can be reattached and fetched after Blender
or the server restarts. No bpy here: the add-on passes the file's path in."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

KEEP = 20  # older jobs drop off the list (the server keeps their results regardless)
# A running job can be followed again; an imported one fetched again. Failed, cancelled and
# interrupted jobs have nothing to fetch.
REATTACHABLE_STATES = ("running", "imported")


@dataclass
class JobRecord:
    job_id: str
    kind: str  # the protocol's job kind: generate, paint or sketch
    label: str  # what the panel shows: the prompt
    target: str = ""  # paint: the object to retexture; sketch: the sketch object to replace
    state: str = "running"  # running, then imported, or how the server says it ended
    message: str = ""  # why it failed
    origin: list | None = None  # generate: where the prop goes (the 3D cursor when it was sent), world xyz

    @property
    def reattachable(self) -> bool:
        return self.state in REATTACHABLE_STATES


class RecentJobs:
    """Newest first; every change is written through to the file at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[JobRecord] = self._load()

    def _load(self) -> list[JobRecord]:
        if not self.path.exists():
            return []
        known = {f.name for f in fields(JobRecord)}
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
            return [JobRecord(**{k: v for k, v in entry.items() if k in known}) for entry in entries]
        except (OSError, ValueError, TypeError) as error:
            # A damaged list must not stop the add-on from loading: start a new one.
            log.warning("ignoring the unreadable recent jobs file %s: %s", self.path, error)
            return []

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps([asdict(r) for r in self.records], indent=1), encoding="utf-8")
        os.replace(scratch, self.path)  # atomic: a crash mid-write leaves the old list intact

    def get(self, job_id: str) -> JobRecord | None:
        return next((r for r in self.records if r.job_id == job_id), None)

    def add(self, record: JobRecord) -> None:
        self.records = [record] + [r for r in self.records if r.job_id != record.job_id][:KEEP - 1]
        self._save()

    def update(self, job_id: str, **changes) -> None:
        record = self.get(job_id)
        if record is None:
            return
        for name, value in changes.items():
            setattr(record, name, value)
        self._save()

    def remove(self, job_id: str) -> None:
        self.records = [r for r in self.records if r.job_id != job_id]
        self._save()
