"""Who is scanning which model version: one row per version in the MLflow server's own database.

Claims make "two workers never record two different decisions for one version" a database
guarantee: an INSERT (or the takeover of an expired lease) succeeds for one worker only, and a
decision is recorded only by the worker holding the claim, once.

A row moves claimed -> recording -> recorded. ``recording`` is entered atomically by the holder
before the decision tags are written and carries its own lease, so a server that dies while
writing the tags leaves a row another worker can take over once that lease runs out (the status
tag is written last: a half-written decision still reads ``pending``). A holder that repeats its
record call after a lost answer is told it is already recorded. ``reset`` (``weightgate rescan``)
deletes the row, so the version can be claimed again and a scan still running for the old claim
can no longer record.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

_METADATA = sa.MetaData()
CLAIMS = sa.Table(
    "weightgate_claims", _METADATA,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(256), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # claimed | recording | recorded
)
CLAIMED, RECORDING, RECORDED = "claimed", "recording", "recorded"


class Recording(enum.Enum):
    """What :meth:`ClaimStore.begin_recording` allows."""

    GO = "go"                # this worker holds the claim: write the tags, then call finish
    ALREADY_DONE = "done"    # this worker recorded it before (a repeated call): nothing to write
    CONFLICT = "conflict"    # another worker holds it, or the claim was reset


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a version that has no decision recorded yet."""

    name: str
    version: int
    worker: str
    expires_at: float  # time.time() when the lease runs out

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


class ClaimStore:
    def __init__(self, engine: sa.engine.Engine) -> None:
        self._engine = engine
        _METADATA.create_all(engine, checkfirst=True)

    def _key(self, name: str, version: int):
        return sa.and_(CLAIMS.c.name == name, CLAIMS.c.version == version)

    def claim(self, name: str, version: int, worker: str, lease_seconds: float) -> bool:
        """Take the version for ``worker``: new, expired (worker or server died) or already this worker's
        (which renews the lease; a lease of 0 gives the claim up to whoever asks next)."""
        now = time.time()
        try:
            with self._engine.begin() as connection:
                connection.execute(CLAIMS.insert().values(name=name, version=version, worker=worker,
                                                          expires_at=now + lease_seconds, state=CLAIMED))
            return True
        except IntegrityError:
            pass
        with self._engine.begin() as connection:
            taken = connection.execute(
                CLAIMS.update()
                .where(self._key(name, version), CLAIMS.c.state.in_([CLAIMED, RECORDING]),
                       sa.or_(CLAIMS.c.expires_at <= now, CLAIMS.c.worker == worker))
                .values(worker=worker, expires_at=now + lease_seconds, state=CLAIMED))
            return taken.rowcount == 1

    def begin_recording(self, name: str, version: int, worker: str, lease_seconds: float) -> Recording:
        with self._engine.begin() as connection:
            moved = connection.execute(
                CLAIMS.update()
                .where(self._key(name, version), CLAIMS.c.worker == worker,
                       CLAIMS.c.state.in_([CLAIMED, RECORDING]))
                .values(state=RECORDING, expires_at=time.time() + lease_seconds))
            if moved.rowcount == 1:
                return Recording.GO
            row = connection.execute(sa.select(CLAIMS.c.worker, CLAIMS.c.state)
                                     .where(self._key(name, version))).first()
        if row is not None and row.worker == worker and row.state == RECORDED:
            return Recording.ALREADY_DONE
        return Recording.CONFLICT

    def finish(self, name: str, version: int, worker: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(CLAIMS.update()
                               .where(self._key(name, version), CLAIMS.c.worker == worker,
                                      CLAIMS.c.state == RECORDING)
                               .values(state=RECORDED))

    def open_claims(self, versions: list[tuple[str, int]]) -> list[Claim]:
        """Claims not recorded yet (claimed or recording) on ``versions``, expired leases included:
        what the gate page shows next to the versions waiting for a decision."""
        if not versions:
            return []
        wanted = set(versions)
        query = sa.select(CLAIMS.c.name, CLAIMS.c.version, CLAIMS.c.worker, CLAIMS.c.expires_at).where(
            CLAIMS.c.state.in_([CLAIMED, RECORDING]), CLAIMS.c.name.in_({name for name, _ in wanted}))
        with self._engine.connect() as connection:
            return [Claim(row.name, int(row.version), row.worker, float(row.expires_at))
                    for row in connection.execute(query) if (row.name, int(row.version)) in wanted]

    def rename_model(self, old: str, new: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(CLAIMS.update().where(CLAIMS.c.name == old).values(name=new))

    def reset(self, name: str, version: int) -> None:
        """Forget the version's claim: it is queued again (``weightgate rescan``)."""
        with self._engine.begin() as connection:
            connection.execute(CLAIMS.delete().where(self._key(name, version)))
