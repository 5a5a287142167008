"""Order model versions by quality predicted from their weights alone.

The metrics and their directions follow the papers: a smaller average power-law exponent alpha,
a smaller alpha-hat (alpha_weighted = alpha * log10(lambda_max), averaged over layers) and a
smaller average log alpha-norm go with better test accuracy across models of one architecture
(Martin & Mahoney; Martin, Peng & Mahoney); a larger MLH goes with better validation accuracy
(Sahu et al.; docs/metrics.md lists the papers). They predict trends within one architecture and
training set, not across architectures.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gate.errors import GateInputError
from gate.options import Choices, ScanOptions, check_value, resolve_device
from gate.vocabulary import NO_STATUS, VersionStatus
from gate.vocabulary import STATUS as GATE_STATUS

if TYPE_CHECKING:
    import pandas as pd

# metric -> which direction predicts the better model
RANK_METRICS: dict[str, str] = {"alpha_weighted": "lower", "alpha": "lower", "log_alpha_norm": "lower",
                                "mlh": "higher"}
RANK_BY = Choices(tuple(RANK_METRICS))  # what rank's ``by`` allows
COLUMNS = ("rank", "source", *RANK_METRICS, "num_analysed", "gate_status")  # what the terminal table shows (and reason)
# a registered version: models:/NAME/VERSION or models:/NAME@ALIAS
_REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


@dataclass
class RankResult:
    """``table``: one row per source, best predicted first by ``by``; ``rank_<metric>`` columns give
    each ranked source's place under every metric (1 = best), so agreement between metrics shows.
    Sources that cannot be ranked come last with a ``reason`` (and no places); registered versions
    carry their ``gate_status``."""

    by: str
    table: "pd.DataFrame"

    def to_dict(self) -> dict[str, Any]:
        from gate.jsonvalues import json_value

        rows = [{key: json_value(value) for key, value in row.items()}
                for row in self.table.to_dict(orient="records")]
        return {"by": self.by, "better": RANK_METRICS[self.by],
                "directions": dict(RANK_METRICS), "versions": rows}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self) -> str:
        return self.table.to_csv(index=False)


def expand_sources(sources: list[str], tracking_uri: str | None = None) -> list[str]:
    """``models:/NAME`` (no version or alias) becomes every version of NAME, oldest first; other
    sources are kept as given."""
    expanded: list[str] = []
    for source in sources:
        name = source.removeprefix("models:/") if source.startswith("models:/") else None
        if name is None or "/" in name or "@" in name or name.startswith("m-") or not name:
            expanded.append(source)
            continue
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from gate.mlflow_connection import resolve_tracking_uri, unreachable_cause, unreachable_error

        server = resolve_tracking_uri(tracking_uri, source)
        client = MlflowClient(tracking_uri=server, registry_uri=server)
        escaped = name.replace("'", "\\'")
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{escaped}'"))
        except MlflowException as err:
            cause = unreachable_cause(err)
            if cause is None:
                raise
            raise unreachable_error(server, source, cause) from err
        if not versions:
            raise GateInputError(f"{source}: registered model {name!r} has no versions (or does not exist) on {server}")
        expanded += [f"models:/{name}/{version}" for version in versions]
    return expanded


def registry_status(source: str, tracking_uri: str | None = None) -> str | None:
    """The ``gate.status`` of a registered version (``models:/NAME/V`` or ``models:/NAME@ALIAS``):
    a :class:`~gate.vocabulary.VersionStatus` word, ``none`` for a version without one; None for
    sources outside the registry."""
    match = _REGISTERED.fullmatch(source)
    if match is None:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version, alias = match.group("name", "version", "alias")
    found = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    return (found.tags or {}).get(GATE_STATUS, NO_STATUS)


def rank(sources: list[Any], by: str = "alpha_weighted", *, device: str = "auto", allow_pickle: bool = False,
         tracking_uri: str | None = None) -> RankResult:
    """Scan every source (paths, URIs, modules; ``models:/NAME`` means all its versions) and order
    them by ``by``. Sources that cannot be ranked go last, each with its reason: non-finite or
    all-zero weights (those layers would drop out of the means and flatter the model), no
    analysable layer, or a registered version whose ``gate.status`` is blocked."""
    check_value("by", by, RANK_BY)
    if not sources:
        raise GateInputError("give at least one model to rank")
    import pandas as pd

    from gate.progress import iterate
    from gate.scanning.pipeline import scan

    # Only the summary is ranked: no weights hash (nothing is recorded against it).
    options = ScanOptions.of(device=device, fingerprint=False)
    resolve_device(options.device)  # before the registry is asked for versions
    names = expand_sources([s for s in sources if isinstance(s, str)], tracking_uri)
    objects = [s for s in sources if not isinstance(s, str)]
    rows = []
    for source in iterate(names + objects, "ranking", "model"):
        summary = scan(source, options, allow_pickle=allow_pickle, tracking_uri=tracking_uri).summary
        row: dict[str, Any] = {"source": source if isinstance(source, str) else f"<{type(source).__name__}>"}
        row.update({metric: float(summary.get(metric, math.nan)) for metric in RANK_METRICS})
        row["num_analysed"] = int(summary.get("num_analysed", 0))
        status = registry_status(source, tracking_uri) if isinstance(source, str) else None
        if status is not None:
            row["gate_status"] = status
        row["reason"] = _unranked_reason(summary, row, by, status)
        rows.append(row)
    table = pd.DataFrame(rows)
    usable = table["reason"] == ""
    for metric, better in RANK_METRICS.items():
        places = table.loc[usable, metric].rank(method="min", ascending=better == "lower", na_option="bottom")
        table[f"rank_{metric}"] = places.reindex(table.index).astype("Int64")
    table = pd.concat([table[usable].sort_values(by, ascending=RANK_METRICS[by] == "lower", kind="stable"),
                       table[~usable]])
    table.insert(0, "rank", range(1, len(table) + 1))
    return RankResult(by, table.reset_index(drop=True))


def _unranked_reason(summary: dict[str, Any], row: dict[str, Any], by: str, status: str | None) -> str:
    """Why a source is not ranked ("" when it is)."""
    reasons = []
    nonfinite, zero = int(summary.get("num_nonfinite", 0)), int(summary.get("num_all_zero", 0))
    if nonfinite:
        reasons.append(f"{nonfinite} layer{'s' if nonfinite != 1 else ''} with NaN/Inf weights")
    if zero:
        reasons.append(f"{zero} all-zero layer{'s' if zero != 1 else ''}")
    if row["num_analysed"] == 0:
        reasons.append("no layer could be analysed")
    elif not math.isfinite(row[by]):
        reasons.append(f"no {by}")
    if status == VersionStatus.BLOCKED:
        reasons.append(f"{GATE_STATUS} is {status}")
    return "; ".join(reasons)
