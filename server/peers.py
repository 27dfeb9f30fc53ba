"""Who is behind each ROUTER routing id, and which job events each one receives.

Routing ids change whenever a client reconnects, so they are addresses, never identities. ROUTER never
says when a peer leaves, so both tables are bounded instead.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_SESSIONS = 10_000
MAX_SUBSCRIBERS_PER_JOB = 16


class Sessions:
    """Routing id -> client identity, set by hello; the least recently used are forgotten first."""

    def __init__(self, capacity: int = MAX_SESSIONS):
        self.capacity = capacity
        self._identities: OrderedDict[bytes, str] = OrderedDict()

    def bind(self, peer: bytes, identity: str) -> None:
        self._identities[peer] = identity
        self._identities.move_to_end(peer)
        while len(self._identities) > self.capacity:
            self._identities.popitem(last=False)

    def identity(self, peer: bytes) -> str | None:
        identity = self._identities.get(peer)
        if identity is not None:
            self._identities.move_to_end(peer)
        return identity


class Subscriptions:
    """Job id -> the routing ids that submitted or attached to it (oldest dropped beyond the cap)."""

    def __init__(self, per_job: int = MAX_SUBSCRIBERS_PER_JOB):
        self.per_job = per_job
        self._peers: dict[str, dict[bytes, None]] = {}

    def add(self, job_id: str, peer: bytes) -> None:
        peers = self._peers.setdefault(job_id, {})
        peers[peer] = None
        if len(peers) > self.per_job:
            del peers[next(iter(peers))]

    def peers(self, job_id: str) -> list[bytes]:
        return list(self._peers.get(job_id, ()))

    def forget_job(self, job_id: str) -> None:
        self._peers.pop(job_id, None)

    def forget_peer(self, peer: bytes) -> None:
        """A peer that is gone (the socket says it is unreachable) gets nothing more."""
        for job_id in [job for job, peers in self._peers.items() if peer in peers]:
            del self._peers[job_id][peer]
            if not self._peers[job_id]:
                del self._peers[job_id]
