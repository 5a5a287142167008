"""Who is scanning which model version: one row per version in the MLflow server's own database.

Claims make "two workers never record two different decisions for one version" a database
guarantee: an INSERT (or the takeover of an expired lease) succeeds for one worker only, and a
decision is recorded only by the worker holding the claim, once.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

_METADATA = sa.MetaData()
CLAIMS = sa.Table(
    "weightgate_claims", _METADATA,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(256), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # claimed | recorded
)


class ClaimStore:
    def __init__(self, engine: sa.engine.Engine) -> None:
        self._engine = engine
        _METADATA.create_all(engine, checkfirst=True)

    def claim(self, name: str, version: int, worker: str, lease_seconds: float) -> bool:
        """Take the version for ``worker``: new, expired (worker died) or already this worker's."""
        now = time.time()
        try:
            with self._engine.begin() as connection:
                connection.execute(CLAIMS.insert().values(name=name, version=version, worker=worker,
                                                          expires_at=now + lease_seconds, state="claimed"))
            return True
        except IntegrityError:
            pass
        with self._engine.begin() as connection:
            taken = connection.execute(
                CLAIMS.update()
                .where(CLAIMS.c.name == name, CLAIMS.c.version == version, CLAIMS.c.state == "claimed",
                       sa.or_(CLAIMS.c.expires_at < now, CLAIMS.c.worker == worker))
                .values(worker=worker, expires_at=now + lease_seconds))
            return taken.rowcount == 1

    def finish(self, name: str, version: int, worker: str) -> bool:
        """Mark the claim recorded; only the holder can, and only once."""
        with self._engine.begin() as connection:
            done = connection.execute(
                CLAIMS.update()
                .where(CLAIMS.c.name == name, CLAIMS.c.version == version, CLAIMS.c.worker == worker,
                       CLAIMS.c.state == "claimed")
                .values(state="recorded"))
            return done.rowcount == 1

    def release(self, name: str, version: int, worker: str) -> None:
        """Undo ``finish`` when writing the decision failed, so the version can be scanned again."""
        with self._engine.begin() as connection:
            connection.execute(
                CLAIMS.update()
                .where(CLAIMS.c.name == name, CLAIMS.c.version == version, CLAIMS.c.worker == worker)
                .values(state="claimed", expires_at=0.0))
