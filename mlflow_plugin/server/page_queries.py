"""The registry-wide questions of the gate page and ``weightgate backfill``, as SQL in the server's
database: MLflow's own tables (through MLflow's ORM classes, ``mlflow.store.model_registry.dbmodels``)
joined with the gate's decisions table (:mod:`mlflow_plugin.server.decisions`).

One query per question, whatever the registry's size: a page of versions (filtered by model name,
status and "promoted": holding Staging/Production or a protected alias; newest activity first), the
count of every status, the scan queue, the aliases of the versions on a page, and the versions with
no decision at all. Versions MLflow deleted (stage ``Deleted_Internal``) and prompts (models tagged
``mlflow.prompt.is_prompt``) are left out, as MLflow's own searches leave them out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

import sqlalchemy as sa

from gate.vocabulary import NO_STATUS, VersionStatus
from mlflow_plugin.server.decisions import DECISIONS, StoredDecision

PROMOTING_STAGES = ("Staging", "Production")


@dataclass(frozen=True)
class PageFilter:
    """What the gate page's search form asks for; empty fields do not filter."""

    name: str = ""        # part of the model name, case-insensitive
    status: str = ""      # a VersionStatus word, or NO_STATUS for versions without a decision
    promoted: bool = False  # holding Staging/Production or a protected alias


@dataclass
class VersionRow:
    """One model version with its decision (None: never decided) and its aliases."""

    name: str
    version: int
    stage: str
    source: str
    created_ms: int
    decision: StoredDecision | None
    aliases: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.decision.status if self.decision else NO_STATUS


class RegistryQueries:
    """The queries, bound to the server's database and its protected aliases."""

    def __init__(self, engine: sa.engine.Engine, protected_aliases: Collection[str]) -> None:
        self.engine = engine
        self.protected = sorted({alias.lower() for alias in protected_aliases})

    # -- building blocks -----------------------------------------------------------------------
    def _versions(self, readable: Collection[str] | None):
        """model_versions LEFT JOIN decisions, live versions of models (not prompts) ``readable`` names."""
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.entities.model_registry.prompt_version import IS_PROMPT_TAG_KEY
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlRegisteredModelTag

        version = SqlModelVersion.__table__
        prompt = SqlRegisteredModelTag.__table__
        joined = version.outerjoin(DECISIONS, sa.and_(DECISIONS.c.name == version.c.name,
                                                      DECISIONS.c.version == version.c.version))
        conditions = [version.c.current_stage != STAGE_DELETED_INTERNAL,
                      ~sa.exists().where(prompt.c.name == version.c.name, prompt.c.key == IS_PROMPT_TAG_KEY,
                                         sa.func.lower(prompt.c.value) == "true")]
        if readable is not None:
            conditions.append(version.c.name.in_(sorted(readable)) if readable else sa.false())
        return version, joined, conditions

    def _holds_protected_alias(self, version):
        """(name, version) IN the versions protected aliases point at: one uncorrelated subquery. A
        correlated EXISTS per version made "blocked but in Production" take 1.2 s at 10,000 versions
        on sqlite, this takes 0.03 s (bench/RESULTS.md)."""
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias

        alias = SqlRegisteredModelAlias.__table__
        held = sa.select(alias.c.name, alias.c.version).where(sa.func.lower(alias.c.alias).in_(self.protected))
        return sa.tuple_(version.c.name, version.c.version).in_(held)

    def promoted_clause(self, version):
        """The version holds Staging/Production or a protected alias."""
        return sa.or_(version.c.current_stage.in_(PROMOTING_STAGES), self._holds_protected_alias(version))

    # -- questions -----------------------------------------------------------------------------
    def page(self, where: PageFilter, offset: int, limit: int,
             readable: Collection[str] | None = None) -> tuple[list[VersionRow], int]:
        """One page of versions, newest activity first (the later of MLflow's last update of the
        version and the gate's last write of its decision), and how many match in all."""
        version, joined, conditions = self._versions(readable)
        if where.name:
            conditions.append(sa.func.lower(version.c.name).contains(where.name.lower(), autoescape=True))
        if where.status == NO_STATUS:
            conditions.append(DECISIONS.c.name.is_(None))
        elif where.status:
            conditions.append(DECISIONS.c.status == where.status)
        if where.promoted:
            conditions.append(self.promoted_clause(version))
        decided_ms = sa.func.coalesce(DECISIONS.c.updated_at * 1000, 0)
        updated_ms = sa.func.coalesce(version.c.last_updated_time, version.c.creation_time, 0)
        activity = sa.case((decided_ms > updated_ms, decided_ms), else_=updated_ms)
        query = (sa.select(*_columns(version)).select_from(joined).where(*conditions)
                 .order_by(activity.desc(), version.c.name, version.c.version.desc()).offset(offset).limit(limit))
        total_query = sa.select(sa.func.count()).select_from(joined).where(*conditions)
        with self.engine.connect() as connection:
            rows = [_row(record) for record in connection.execute(query)]
            total = connection.execute(total_query).scalar_one()
            self._attach_aliases(connection, rows)
        return rows, int(total)

    def counts(self, readable: Collection[str] | None = None) -> dict[str, int]:
        """Versions per status (NO_STATUS: no decision at all)."""
        _, joined, conditions = self._versions(readable)
        status = sa.func.coalesce(DECISIONS.c.status, NO_STATUS)
        query = sa.select(status, sa.func.count()).select_from(joined).where(*conditions).group_by(status)
        with self.engine.connect() as connection:
            return {str(word): int(count) for word, count in connection.execute(query)}

    def promoted_unapproved(self, approving: Collection[str], readable: Collection[str] | None = None) -> int:
        """How many versions hold Staging/Production or a protected alias without an approving decision."""
        version, joined, conditions = self._versions(readable)
        query = sa.select(sa.func.count()).select_from(joined).where(
            *conditions, self.promoted_clause(version),
            sa.or_(DECISIONS.c.status.is_(None), DECISIONS.c.status.not_in(list(approving))))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def queue(self, limit: int, readable: Collection[str] | None = None,
              name: str | None = None) -> tuple[list[VersionRow], int]:
        """Pending versions, oldest registration first, and how many are pending in all."""
        version, joined, conditions = self._versions(readable)
        conditions.append(DECISIONS.c.status == VersionStatus.PENDING)
        if name is not None:
            conditions.append(version.c.name == name)
        query = (sa.select(*_columns(version)).select_from(joined).where(*conditions)
                 .order_by(version.c.creation_time, version.c.name, version.c.version).limit(limit))
        with self.engine.connect() as connection:
            rows = [_row(record) for record in connection.execute(query)]
            total = connection.execute(sa.select(sa.func.count()).select_from(joined).where(*conditions)).scalar_one()
        return rows, int(total)

    def undecided(self, limit: int) -> list[VersionRow]:
        """Live versions with no decision row (registered before the gate), oldest first, with aliases."""
        version, joined, conditions = self._versions(None)
        query = (sa.select(*_columns(version)).select_from(joined).where(*conditions, DECISIONS.c.name.is_(None))
                 .order_by(version.c.name, version.c.version).limit(limit))
        with self.engine.connect() as connection:
            rows = [_row(record) for record in connection.execute(query)]
            self._attach_aliases(connection, rows)
        return rows

    def model_exists(self, name: str) -> bool:
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModel

        model = SqlRegisteredModel.__table__
        with self.engine.connect() as connection:
            return connection.execute(sa.select(model.c.name).where(model.c.name == name)).first() is not None

    def model_names(self) -> list[str]:
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModel

        model = SqlRegisteredModel.__table__
        with self.engine.connect() as connection:
            return [row.name for row in connection.execute(sa.select(model.c.name).order_by(model.c.name))]

    def _attach_aliases(self, connection, rows: list[VersionRow]) -> None:
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias

        if not rows:
            return
        alias = SqlRegisteredModelAlias.__table__
        found: dict[tuple[str, int], list[str]] = defaultdict(list)
        query = sa.select(alias.c.name, alias.c.version, alias.c.alias).where(
            alias.c.name.in_({row.name for row in rows})).order_by(alias.c.alias)
        for record in connection.execute(query):
            found[(record.name, int(record.version))].append(record.alias)
        for row in rows:
            row.aliases = found.get((row.name, row.version), [])


def _columns(version) -> list:
    """The version's columns and its decision row's (prefixed ``d_``), as :func:`_row` reads them."""
    return [version.c.name, version.c.version, version.c.current_stage, version.c.source, version.c.creation_time,
            *[column.label(f"d_{column.name}") for column in DECISIONS.columns]]


def _row(record) -> VersionRow:
    mapping = record._mapping
    decision = None
    if mapping["d_name"] is not None:
        decision = StoredDecision(**{column.name: mapping[f"d_{column.name}"] for column in DECISIONS.columns})
    return VersionRow(name=mapping["name"], version=int(mapping["version"]), stage=mapping["current_stage"] or "",
                      source=mapping["source"] or "", created_ms=int(mapping["creation_time"] or 0), decision=decision)
