"""The policy in words (``policy show``) and the files ``check --out`` writes (decisions in words: gate.report)."""

from __future__ import annotations

import os
import secrets
import textwrap
from pathlib import Path

from gate.errors import GateInputError
from gate.policy.evaluate import LINEAGE_COSINE
from gate.policy.schema import Policy
from gate.vocabulary import WhenNoBaseline


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
        scope_notes = _scope_notes(rule)
        if scope_notes:
            lines.extend("    " + line for line in textwrap.wrap("applies to: " + scope_notes, 96))
        if rule.evidence:
            lines.extend("    " + line for line in textwrap.wrap("evidence: " + rule.evidence, 96))
    return "\n".join(lines)


def _scope_notes(rule) -> str:
    """The rule's layer selection and conditions in words (what `policy show` adds to the text)."""
    notes = []
    filters = rule.layers
    if filters.types:
        notes.append("layer types " + ", ".join(filters.types))
    if filters.exclude_types:
        notes.append("not " + ", ".join(filters.exclude_types))
    if filters.min_M:
        notes.append(f"layers with M >= {filters.min_M}")
    if filters.exclude_heads:
        notes.append("hidden layers only (not the last layer nor heads named head/classifier/lm_head/...)")
    if rule.fit == "well_fitted":
        notes.append(f"well-fitted layers only (inconclusive below a share of {rule.min_well_fitted:g})")
    if rule.lineage == "descendant":
        notes.append(f"models that descend from their baseline (median layer |cosine| >= {LINEAGE_COSINE:g})")
    if rule.needs_baseline:
        notes.append("needs a baseline" + (" (skipped without one)" if rule.when_no_baseline == WhenNoBaseline.SKIP else ""))
    return "; ".join(notes)


def write_outputs(result, out_dir: str) -> list[Path]:
    """decision.json, layers.csv (and baseline_layers.csv), each written whole or not at all; returns the files."""
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files = {"decision.json": result.decision.to_json(), "layers.csv": result.scan.to_csv()}
        if result.baseline_scan is not None:
            files["baseline_layers.csv"] = result.baseline_scan.to_csv()
        return [_write_atomically(directory / name, text) for name, text in files.items()]
    except OSError as err:
        raise GateInputError(f"{out_dir}: cannot write the decision files: {err.strerror or err}") from err


def _write_atomically(path: Path, text: str) -> Path:
    """A temporary file beside ``path``, renamed over it once written. Created 0666 less the umask,
    as open() creates the report and charts beside it (mkstemp's 0600 made the decision unreadable
    to the group that reads the report)."""
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path
