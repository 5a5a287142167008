"""People-facing renderings of policies and decisions, and the files ``check --out`` writes."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

from gate.errors import GateInputError
from gate.policy.decision import Decision
from gate.policy.schema import Policy

_MARK = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}


def render_decision(decision: Decision) -> str:
    lines = [
        f"decision: {decision.decision.upper()}",
        f"source:   {decision.source}",
        f"baseline: {decision.baseline or '(none)'}",
        f"policy:   {decision.policy['name']} ({decision.policy['path']}, sha256 {decision.policy['sha256'][:12]})",
        "",
    ]
    for rule in decision.rules:
        head = f"{_MARK[rule.status]:5s} {rule.rule_id} [{rule.severity}]"
        lines.append(head + (f": {rule.reason}" if rule.reason else ""))
    return "\n".join(lines)


def render_policy(policy: Policy) -> str:
    lines = [f"policy {policy.name} ({policy.path}, sha256 {policy.sha256})"]
    if policy.description:
        lines.extend(textwrap.wrap(policy.description, 100))
    for rule in policy.rules:
        condition = ", ".join(f"{k}={v}" for k, v in rule.condition.describe().items() if v is not None)
        share = f", mostly={rule.mostly:g}" if rule.scope == "layer" else ""
        lines.append("")
        lines.append(f"- {rule.id} [{rule.severity}] {rule.scope} {rule.metric}: {condition}{share}")
        lines.extend("    " + line for line in textwrap.wrap(rule.description, 96))
    return "\n".join(lines)


def write_outputs(result, out_dir: str) -> None:
    """decision.json, layers.csv (and baseline_layers.csv), each written whole or not at all."""
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files = {"decision.json": result.decision.to_json(), "layers.csv": result.scan.to_csv()}
        if result.baseline_scan is not None:
            files["baseline_layers.csv"] = result.baseline_scan.to_csv()
        for name, text in files.items():
            _write_atomically(directory / name, text)
    except OSError as err:
        raise GateInputError(f"{out_dir}: cannot write the decision files: {err.strerror or err}") from err


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
