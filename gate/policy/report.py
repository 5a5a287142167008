"""People-facing renderings of policies and decisions, and the files ``check --out`` writes."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

from gate.errors import GateInputError
from gate.policy.decision import Decision
from gate.policy.evaluate import LINEAGE_COSINE
from gate.policy.schema import Policy
from gate.vocabulary import RuleStatus, WhenNoBaseline

_MARK = {RuleStatus.PASSED: "PASS", RuleStatus.FAILED: "FAIL", RuleStatus.ERROR: "ERROR", RuleStatus.SKIPPED: "SKIP",
         RuleStatus.INCONCLUSIVE: "INCONCLUSIVE"}


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
        if rule.status == RuleStatus.INCONCLUSIVE:
            if rule.passed:
                continue  # listed apart below: no verdict is not a pass
            head += f" (inconclusive -> {rule.inconclusive_effect})"
        lines.append(head + (f": {rule.reason}" if rule.reason else ""))
    inconclusive = [rule for rule in decision.inconclusive_rules if rule.passed]
    if inconclusive:
        lines += ["", f"inconclusive ({len(inconclusive)}; not violations, too little trustworthy evidence):"]
        lines += [f"  {rule.rule_id} [{rule.severity}]: {rule.reason}" for rule in inconclusive]
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
