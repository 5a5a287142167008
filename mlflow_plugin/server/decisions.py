"""The gate's decisions, one row per model version, in the MLflow server's own database.

Enforcement reads a promotion's evidence here: one primary-key lookup gives the status, the policy
sha256 the decision was made under, the version source and weights fingerprint it was made for.
Only the server writes the table, through the endpoints that check the worker's or the override
credential (:mod:`mlflow_plugin.server.endpoints`) and at registration, so a client that can write
version tags cannot forge a decision. The version's four ``gate.*`` tags are this row's display
copy, written by the server right after the row (:mod:`mlflow_plugin.server.state`); the gate page
lists versions from here (:mod:`mlflow_plugin.server.page_queries`).

A version without a row (registered before the gate, or judged by a weightgate that kept decisions
in tags) has no decision: promotions are refused until ``weightgate backfill`` has it decided.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gate.vocabulary import VersionStatus
from mlflow_plugin.decision_record import DecisionRecord

_METADATA = sa.MetaData()
DECISIONS = sa.Table(
    "weightgate_decisions", _METADATA,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("summary", sa.Text, nullable=False, default=""),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("decided_at", sa.String(40), nullable=False, default=""),
    sa.Column("attempts", sa.Integer, nullable=True),
    sa.Column("decision_run", sa.String(64), nullable=True),
    sa.Column("experiment_id", sa.String(64), nullable=True),
    sa.Column("policy", sa.String(256), nullable=False, default=""),
    sa.Column("policy_sha256", sa.String(64), nullable=False, default=""),
    sa.Column("weights_sha256", sa.String(64), nullable=False, default=""),
    sa.Column("baseline", sa.Text, nullable=False, default=""),
    sa.Column("baseline_note", sa.Text, nullable=False, default=""),
    sa.Column("inconclusive_rules", sa.Text, nullable=False, default=""),  # rule ids, comma-separated
    sa.Column("worker", sa.String(256), nullable=False, default=""),
    sa.Column("override_by", sa.String(256), nullable=False, default=""),
    sa.Column("override_at", sa.String(40), nullable=False, default=""),
    sa.Column("override_reason", sa.Text, nullable=False, default=""),
    sa.Column("override_previous_status", sa.String(16), nullable=False, default=""),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),  # epoch seconds: the page's "newest activity"
)
# Columns a new decision (or a return to pending) resets: nothing of an earlier decision stays behind.
_DECISION_COLUMNS = ("summary", "reason", "source", "decided_at", "attempts", "decision_run", "experiment_id",
                     "policy", "policy_sha256", "weights_sha256", "baseline", "baseline_note", "inconclusive_rules",
                     "worker", "override_by", "override_at", "override_reason", "override_previous_status")
_CLEARED = {column: "" for column in _DECISION_COLUMNS} | {"attempts": None, "decision_run": None,
                                                          "experiment_id": None}


@dataclass(frozen=True)
class StoredDecision:
    """One row, as the checks and the gate page read it."""

    name: str
    version: int
    status: str
    summary: str
    reason: str
    source: str
    decided_at: str
    attempts: int | None
    decision_run: str | None
    experiment_id: str | None
    policy: str
    policy_sha256: str
    weights_sha256: str
    baseline: str
    baseline_note: str
    inconclusive_rules: str
    worker: str
    override_by: str
    override_at: str
    override_reason: str
    override_previous_status: str
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> "StoredDecision":
        return cls(**{column.name: getattr(row, column.name) for column in DECISIONS.columns})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DecisionStore:
    """The table in one database, created (idempotently) at server start."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self.engine = engine
        _METADATA.create_all(engine, checkfirst=True)

    def get(self, name: str, version: int | str) -> StoredDecision | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(DECISIONS).where(self._key(name, version))).first()
        return StoredDecision.from_row(row) if row is not None else None

    def mark_pending(self, name: str, version: int | str, summary: str, reason: str) -> None:
        """The version waits for a scan (new, queued again, or taken in by a backfill)."""
        self._upsert(name, version, {**_CLEARED, "status": VersionStatus.PENDING, "summary": summary,
                                     "reason": reason})

    def record(self, name: str, version: int | str, record: DecisionRecord, worker: str) -> None:
        values = {**record.model_dump(), "inconclusive_rules": ",".join(record.inconclusive_rules)}
        self._upsert(name, version, {**_CLEARED, **values, "worker": worker})

    def override(self, name: str, version: int | str, actor: str, at: str, reason: str, previous: str,
                 summary: str) -> None:
        """Approved despite the decision; the decision's own fields stay for the record."""
        self._upsert(name, version, {"status": VersionStatus.OVERRIDDEN, "summary": summary, "override_by": actor,
                                     "override_at": at, "override_reason": reason,
                                     "override_previous_status": previous})

    def rename_model(self, old: str, new: str) -> None:
        """MLflow renamed a registered model: its versions keep their decisions."""
        with self.engine.begin() as connection:
            connection.execute(DECISIONS.update().where(DECISIONS.c.name == old).values(name=new))

    def undecided(self, names_and_versions: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Those of the given versions that have no row at all."""
        wanted = list(names_and_versions)
        if not wanted:
            return []
        with self.engine.connect() as connection:
            known = {(row.name, int(row.version)) for row in connection.execute(
                sa.select(DECISIONS.c.name, DECISIONS.c.version).where(
                    DECISIONS.c.name.in_({name for name, _ in wanted})))}
        return [key for key in wanted if key not in known]

    def _key(self, name: str, version: int | str):
        return sa.and_(DECISIONS.c.name == name, DECISIONS.c.version == int(version))

    def _upsert(self, name: str, version: int | str, values: dict[str, Any]) -> None:
        """Update the row, or insert it; two servers inserting the same new row: the loser updates."""
        values = {**values, "updated_at": time.time()}
        for _ in range(2):
            try:
                with self.engine.begin() as connection:
                    if connection.execute(DECISIONS.update().where(self._key(name, version)).values(**values)).rowcount:
                        return
                    connection.execute(DECISIONS.insert().values(name=name, version=int(version),
                                                                 **{**_CLEARED, "status": "", **values}))
                return
            except IntegrityError:
                continue  # inserted by another server process meanwhile: update it
        raise RuntimeError(f"could not write the weightgate decision of {name} version {version}")
