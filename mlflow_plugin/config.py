"""The gate's settings, all from environment variables (one table in README.md and deploy/)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gate.errors import GateInputError
from gate.vocabulary import VersionStatus


class GateConfigError(GateInputError):
    """The server or worker cannot start with these settings (the CLI exits 2 with the message)."""


@dataclass(frozen=True)
class GateConfig:
    protected_aliases: frozenset[str]
    allow_warned: bool
    worker_token: str | None
    override_token: str | None
    policy_path: str | None

    @classmethod
    def from_env(cls) -> "GateConfig":
        aliases = os.environ.get("WEIGHTGATE_PROTECTED_ALIASES", "champion,production,prod")
        allow_warned = os.environ.get("WEIGHTGATE_ALLOW_WARNED", "false").strip().lower()
        if allow_warned not in ("true", "false"):
            raise GateConfigError(f"WEIGHTGATE_ALLOW_WARNED must be true or false, not {allow_warned!r}")
        return cls(
            protected_aliases=frozenset(a.strip() for a in aliases.split(",") if a.strip()),
            allow_warned=allow_warned == "true",
            worker_token=os.environ.get("WEIGHTGATE_WORKER_TOKEN") or None,
            override_token=os.environ.get("WEIGHTGATE_OVERRIDE_TOKEN") or None,
            policy_path=os.environ.get("WEIGHTGATE_POLICY") or None,
        )

    def is_protected(self, alias: str) -> bool:
        """Alias names are matched case-insensitively, as MLflow users type them either way."""
        return alias.lower() in {a.lower() for a in self.protected_aliases}

    def approving_statuses(self) -> frozenset[str]:
        return frozenset({VersionStatus.APPROVED, VersionStatus.OVERRIDDEN} | ({VersionStatus.WARNED} if self.allow_warned else set()))
