"""Sections of bench/ZOO.md for issues 26 and 27: healthy models against their random copies (how much
of each model the random-like test could judge), and quantised copies (scheme, weight error,
accuracy change, verdict)."""

from __future__ import annotations

import math
from collections import defaultdict

from zoo_families import QUANT_KINDS

RANDOM_KINDS = ("untrained",)
QUANTISED = ("int4_round_trip", *QUANT_KINDS)


def _verdict(record: dict) -> str:
    """``block (untrained-model)``, ``warn (untrained-model inconclusive)``, ``approve``."""
    fired = list(record["failed"])
    unsure = [f"{rule} inconclusive" for rule, effect in record.get("inconclusive_effects", {}).items()
              if rule == "untrained-model" or effect != "pass"]
    detail = ", ".join(fired[:2] + unsure)
    return f"{record['decision']} ({detail})" if detail else record["decision"]


def _judged(record: dict) -> str:
    judged, total, share = record.get("random_like_judged"), record.get("num_layers"), record.get("random_like_judged_share")
    if judged is None:
        return "-"
    share_text = f"{share:.0%}" if isinstance(share, float) and math.isfinite(share) else "-"
    return f"{judged}/{total} ({share_text})"


def random_copy_section(records: list[dict]) -> list[str]:
    """Per family: the healthy model and its random copy, their verdicts and the evidence the
    random-like test had (layers judged of all, share of the weights)."""
    by_family: dict[str, dict[str, dict]] = defaultdict(dict)
    for record in records:
        if record["kind"] in ("healthy", *RANDOM_KINDS):
            by_family[record["family"]][record["kind"]] = record
    lines = ["## Healthy models and their random copies (issue 27)", "",
             "The random copy of a trainable family is a fresh initialisation; of a pretrained one, i.i.d. weights "
             "with each matrix's own standard deviation. Judged: layers with a random-like verdict of all weight "
             "layers, and their share of the weights (untrained-model is inconclusive below 50%).", "",
             "| family | healthy: verdict | judged | random-like fraction | random copy: verdict | judged | random-like fraction |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    counts = defaultdict(int)
    for family, pair in by_family.items():
        healthy, copy = pair.get("healthy"), pair.get("untrained")
        cells = []
        for record in (healthy, copy):
            if record is None:
                cells += ["-", "-", "-"]
                continue
            fraction = record.get("random_like_fraction")
            cells += [_verdict(record), _judged(record),
                      f"{fraction:.2f}" if isinstance(fraction, float) and math.isfinite(fraction) else "none judged"]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
        if healthy is not None:
            counts["healthy"] += 1
            counts["healthy_blocked"] += healthy["decision"] == "block"
        if copy is not None:
            counts["copies"] += 1
            unsure = bool(copy.get("inconclusive_effects"))
            counts["copy_blocked"] += copy["decision"] == "block"
            counts["copy_inconclusive"] += copy["decision"] != "block" and "untrained-model" in copy.get("inconclusive_effects", {})
            counts["copy_approved_silently"] += copy["decision"] == "approve" and not unsure
    lines += ["", f"**Healthy models blocked: {counts['healthy_blocked']}/{counts['healthy']}. Random copies: "
                  f"blocked {counts['copy_blocked']}/{counts['copies']}, not blocked with untrained-model inconclusive "
                  f"{counts['copy_inconclusive']}, approved without an inconclusive rule "
                  f"{counts['copy_approved_silently']}.**", ""]
    return lines


def quantisation_section(records: list[dict]) -> list[str]:
    """Per family and quantised copy: the scheme the gate named, the relative weight error, the test
    accuracy change against the healthy parent, and the verdict."""
    parents = {r["family"]: r for r in records if r["kind"] == "healthy"}
    lines = ["## Quantised copies (issue 26)", "",
             "Symmetric absmax round trips stored back as float32 (bench/zoo_families.py): per tensor, per output "
             "channel, or per group of 32 inputs (layers whose row length 32 does not divide: per channel). "
             "Relative weight error: ||W_q - W|| / ||W|| over all matched layers. Accuracy change: held-out test "
             "accuracy of the copy minus its parent's (trainable families; pretrained ones have none here).", "",
             "| family | copy | named by the gate | relative weight error | accuracy change | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    worst: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record["kind"] not in QUANTISED:
            continue
        parent = parents.get(record["family"])
        change = (record["test_accuracy"] - parent["test_accuracy"]) if parent is not None else math.nan
        error = record.get("relative_error", math.nan)
        named = (record.get("quantisation") or "-").split(" quantisation of")[0]
        change_text = f"{change * 100:+.1f} pt" if math.isfinite(change) else "-"
        lines.append(f"| {record['family']} | {record['kind']} | {named} | {error:.1%} | {change_text} | {_verdict(record)} |")
        if math.isfinite(change):
            worst[record["kind"]].append(change)
    lines += ["", "Per copy kind: accuracy change over the trainable families, and the relative error of single layers "
                  "that moved onto a new integer grid (what quantisation-error judges), over all families:", "",
              "| copy | families with accuracy | accuracy change: worst | median | layers | layer error: min | median | max |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind in QUANTISED:
        changes = sorted(worst.get(kind, []))
        errors = sorted(e for r in records if r["kind"] == kind for e in r.get("quantisation_errors", []))
        change_cells = (f"{changes[0] * 100:+.1f} pt | {changes[len(changes) // 2] * 100:+.1f} pt" if changes else "- | -")
        error_cells = (f"{errors[0]:.1%} | {errors[len(errors) // 2]:.1%} | {errors[-1]:.1%}" if errors else "- | - | -")
        lines.append(f"| {kind} | {len(changes)} | {change_cells} | {len(errors)} | {error_cells} |")
    return lines + [""]
