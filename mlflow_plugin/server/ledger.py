"""The promotion ledger: an append-only, hash-chained record of what happened to each model version.

MLflow keeps no history of alias or stage changes (mlflow issue #2169), so the gate keeps one in
the MLflow server's own database (sqlite or PostgreSQL, through MLflow's SQLAlchemy engine): every
attempt to set or delete a protected alias, every stage transition, every recorded decision and
every override, allowed or refused. Each row stores the hash of the row before it
(sha256(previous hash + canonical JSON of this row)), and a one-row head (hash and count of the
last row) is kept beside the table, so :func:`verify` names an edited row, a deleted row, or
deleted rows at the end. Whoever can rewrite the whole database can rewrite the chain too: the
ledger makes tampering evident to someone who kept an earlier head (``audit verify`` prints it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

SCHEMA_VERSION = 1
GENESIS = "0" * 64
FIELDS = ("id", "at", "user", "model", "version", "action", "target", "outcome", "status", "policy_sha256", "detail")

_METADATA = sa.MetaData()
LEDGER = sa.Table(
    "weightgate_ledger", _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("user", sa.String(256), nullable=False),
    sa.Column("model", sa.String(256), nullable=False, index=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("policy_sha256", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
META = sa.Table(
    "weightgate_ledger_meta", _METADATA,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

class LedgerError(RuntimeError):
    """The ledger in this database cannot be used by this version of weightgate."""


@dataclass(frozen=True)
class Entry:
    """One ledger row as written; ``id``, ``at``, ``prev_hash`` and ``hash`` are set on append."""

    user: str
    model: str
    version: str
    action: str
    target: str
    outcome: str
    status: str = ""
    policy_sha256: str = ""
    detail: str = ""
    id: int = 0
    at: str = ""
    prev_hash: str = ""
    hash: str = ""

    def content(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verification:
    ok: bool
    rows: int
    head: str
    problems: list[str] = field(default_factory=list)


def row_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """sha256 of the previous row's hash followed by this row's canonical JSON."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


class Ledger:
    """The ledger tables in one database: created (idempotently) on construction by the server;
    readers (``create=False``) never write."""

    def __init__(self, engine: sa.engine.Engine, create: bool = True) -> None:
        self._engine = engine
        if create:
            _METADATA.create_all(engine, checkfirst=True)
            self._initialise_meta()
        elif not sa.inspect(engine).has_table(META.name):
            raise LedgerError(f"{engine.url.render_as_string(hide_password=True)} holds no weightgate ledger "
                              "(the server creates it when started with --app-name weightgate)")

    def _initialise_meta(self) -> None:
        initial = {"schema_version": str(SCHEMA_VERSION), "head": GENESIS, "count": "0"}
        for key, value in initial.items():
            try:
                with self._engine.begin() as connection:
                    connection.execute(META.insert().values(key=key, value=value))
            except IntegrityError:
                pass  # already there (another server process created it first)
        found = int(self._meta()["schema_version"])
        if found > SCHEMA_VERSION:
            raise LedgerError(f"the weightgate ledger in this database has schema version {found}, newer than this "
                              f"weightgate understands ({SCHEMA_VERSION}); upgrade weightgate on this server")

    def _meta(self, connection: sa.engine.Connection | None = None) -> dict[str, str]:
        if connection is None:
            with self._engine.connect() as own:
                return self._meta(own)
        return dict(connection.execute(sa.select(META.c.key, META.c.value)).all())

    def append(self, entry: Entry) -> Entry:
        """Add a row at the end of the chain; appends are serialised by a write lock on the head."""
        with self._engine.begin() as connection:
            # Taking the head row's write lock first (an UPDATE) serialises concurrent appenders on
            # PostgreSQL (row lock) and sqlite (database write lock) alike.
            connection.execute(META.update().where(META.c.key == "head").values(value=META.c.value))
            meta = self._meta(connection)
            row_id = int(meta["count"]) + 1
            at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            placed = Entry(**{**entry.to_dict(), "id": row_id, "at": at, "prev_hash": meta["head"], "hash": ""})
            sealed = Entry(**{**placed.to_dict(), "hash": row_hash(placed.prev_hash, placed.content())})
            connection.execute(LEDGER.insert().values(**sealed.to_dict()))
            connection.execute(META.update().where(META.c.key == "head").values(value=sealed.hash))
            connection.execute(META.update().where(META.c.key == "count").values(value=str(row_id)))
        return sealed

    def entries(self, model: str | None = None) -> list[Entry]:
        """Rows in order (oldest first), of one model or all."""
        query = sa.select(LEDGER).order_by(LEDGER.c.id)
        if model is not None:
            query = query.where(LEDGER.c.model == model)
        with self._engine.connect() as connection:
            return [Entry(**dict(row._mapping)) for row in connection.execute(query)]

    def page(self, model: str | None, limit: int, after: int | None = None, before: int | None = None,
             newest_first: bool = False, models: list[str] | None = None) -> list[Entry]:
        """At most ``limit`` rows of one model (or of ``models``, or all) with ids after ``after`` and
        before ``before``: oldest first, or newest first (the gate page's history)."""
        query = sa.select(LEDGER).order_by(LEDGER.c.id.desc() if newest_first else LEDGER.c.id).limit(limit)
        if model is not None:
            query = query.where(LEDGER.c.model == model)
        if models is not None:
            query = query.where(LEDGER.c.model.in_(models) if models else sa.false())
        if after is not None:
            query = query.where(LEDGER.c.id > after)
        if before is not None:
            query = query.where(LEDGER.c.id < before)
        with self._engine.connect() as connection:
            return [Entry(**dict(row._mapping)) for row in connection.execute(query)]

    def verify(self) -> Verification:
        """Walk the chain and name every row that was edited or deleted."""
        problems: list[str] = []
        previous_hash, expected_id = GENESIS, 1
        rows = self.entries()
        for entry in rows:
            label = f"row {entry.id} ({entry.model} version {entry.version}, {entry.action} {entry.target})"
            if entry.id != expected_id:
                missing = f"row {expected_id}" if entry.id == expected_id + 1 else f"rows {expected_id}-{entry.id - 1}"
                problems.append(f"{missing} deleted (the chain jumps from row {expected_id - 1} to row {entry.id})")
            elif entry.prev_hash != previous_hash:
                problems.append(f"{label} does not link to row {entry.id - 1}: row {entry.id - 1} was edited "
                                "(its hash rewritten) or replaced")
            if row_hash(entry.prev_hash, entry.content()) != entry.hash:
                problems.append(f"{label} was edited: its content no longer matches its hash")
            previous_hash, expected_id = entry.hash, entry.id + 1
        meta = self._meta()
        count = int(meta["count"])
        if count > len(rows) and (not rows or rows[-1].id < count):
            last = rows[-1].id if rows else 0
            problems.append(f"rows {last + 1}-{count} deleted (the ledger head records {count} rows)")
        elif rows and meta["head"] != rows[-1].hash and rows[-1].id == count:
            problems.append(f"row {count} does not match the ledger head: it was edited")
        return Verification(ok=not problems, rows=len(rows), head=meta["head"], problems=problems)
