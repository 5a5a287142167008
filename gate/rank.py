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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gate.errors import GateInputError
from gate.options import Choices, ScanOptions, check_value, resolve_device

if TYPE_CHECKING:
    import pandas as pd

# metric -> which direction predicts the better model
RANK_METRICS: dict[str, str] = {"alpha_weighted": "lower", "alpha": "lower", "log_alpha_norm": "lower",
                                "mlh": "higher"}
RANK_BY = Choices(tuple(RANK_METRICS))  # what rank's ``by`` allows
COLUMNS = ("rank", "source", *RANK_METRICS, "num_analysed")  # what the terminal table shows


@dataclass
class RankResult:
    """``table``: one row per source, best predicted first by ``by``; ``rank_<metric>`` columns give
    each source's place under every metric (1 = best), so agreement between metrics shows."""

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


def rank(sources: list[Any], by: str = "alpha_weighted", *, device: str = "auto", allow_pickle: bool = False,
         tracking_uri: str | None = None) -> RankResult:
    """Scan every source (paths, URIs, modules; ``models:/NAME`` means all its versions) and order
    them by ``by``. A source whose ``by`` metric is missing (no analysable layer) goes last, with
    a reason."""
    check_value("by", by, RANK_BY)
    if not sources:
        raise GateInputError("give at least one model to rank")
    import pandas as pd

    from gate.scanning.pipeline import scan

    # Only the summary is ranked: no weights hash (nothing is recorded against it).
    options = ScanOptions.of(device=device, fingerprint=False)
    resolve_device(options.device)  # before the registry is asked for versions
    names = expand_sources([s for s in sources if isinstance(s, str)], tracking_uri)
    objects = [s for s in sources if not isinstance(s, str)]
    rows = []
    for source in names + objects:
        summary = scan(source, options, allow_pickle=allow_pickle, tracking_uri=tracking_uri).summary
        row: dict[str, Any] = {"source": source if isinstance(source, str) else f"<{type(source).__name__}>"}
        row.update({metric: float(summary.get(metric, math.nan)) for metric in RANK_METRICS})
        row["num_analysed"] = int(summary.get("num_analysed", 0))
        row["reason"] = "" if math.isfinite(row[by]) else f"no {by}: no layer could be analysed"
        rows.append(row)
    table = pd.DataFrame(rows)
    for metric, better in RANK_METRICS.items():
        table[f"rank_{metric}"] = table[metric].rank(method="min", ascending=better == "lower",
                                                     na_option="bottom").astype(int)
    table = table.sort_values(by, ascending=RANK_METRICS[by] == "lower", na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return RankResult(by, table.reset_index(drop=True))
