"""``check --format junit`` and the ``gate.summary`` line, on a small model with a NaN layer and a
rank-collapsed layer against its healthy original. The JUnit shape is compared with the report
pytest itself writes (what CI servers are built to read)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from gate.check import check
from gate.cli.app import main
from gate.report.verdict import reason_text, summary_line


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    directory = tmp_path_factory.mktemp("junit")
    generator = torch.Generator().manual_seed(0)
    healthy = {f"block{i}.weight": torch.randn(96, 64, generator=generator) for i in range(4)}
    broken = {k: v.clone() for k, v in healthy.items()}
    broken["block1.weight"][3, 3] = float("nan")
    u, v = torch.randn(96, 1, generator=generator), torch.randn(1, 64, generator=generator)
    broken["block2.weight"] = u @ v  # rank 1: stable rank falls to 1
    save_file(healthy, str(directory / "healthy.safetensors"))
    save_file(broken, str(directory / "broken.safetensors"))
    return directory


def test_summary_line_names_the_worst_layers(damaged):
    """Each failed rule's finding, its worst layer in the units people use (numbers against numpy);
    the counts close the line."""
    result = check(damaged / "broken.safetensors", baseline=damaged / "healthy.safetensors", device="cpu")
    line = summary_line(result.decision)
    healthy = load_file(str(damaged / "healthy.safetensors"))["block2.weight"].double().numpy()
    broken = load_file(str(damaged / "broken.safetensors"))["block2.weight"].double().numpy()
    cosine = float((healthy * broken).sum() / np.linalg.norm(healthy) / np.linalg.norm(broken))
    # one cause, one finding: the NaN layer is named once, by the rule on non-finite weights
    assert line.startswith(f"blocked: block1: 1 NaN weight (of {96 * 64}) (no-nonfinite-layers); ")
    assert line.count("block1") == 1
    # one phrase for block2, whichever rules found what there: its cosine first (the first rule that names it)
    assert f"; block2: cosine {cosine:.2g} with healthy.safetensors, stable rank " in line
    assert line.endswith(" | 6 rules failed, 6 passed, 2 skipped (no layer in scope)") and len(line) <= 300
    singular = [np.linalg.svd(matrix, compute_uv=False) for matrix in (healthy, broken)]
    ranks = [float((s ** 2).sum() / (s ** 2).max()) for s in singular]
    assert f"stable rank {ranks[0]:.3g} -> {ranks[1]:.3g} ({ranks[1] / ranks[0] - 1:+.0%})" in reason_text(result.decision)
    assert ranks[1] / ranks[0] < 0.1  # rank 1 of 64 columns: far below half of the healthy stable rank


def _pytest_junit_reference(tmp_path) -> ET.Element:
    (tmp_path / "test_shape.py").write_text(
        "import pytest\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('fixture')\n"
        "def test_pass(record_property):\n    record_property('k', 'v')\n"
        "def test_fail():\n    assert False, 'reason'\n"
        "def test_skip():\n    pytest.skip('why')\n"
        "def test_error(broken):\n    pass\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_shape.py"),
                    f"--junitxml={tmp_path / 'ref.xml'}", "-o", "junit_family=xunit1"], capture_output=True, timeout=300)
    return ET.parse(tmp_path / "ref.xml").getroot()


def _shape(root: ET.Element) -> dict[str, set[str]]:
    shape: dict[str, set[str]] = {}
    for element in root.iter():
        shape.setdefault(element.tag, set()).update(element.attrib)
    return shape


def test_junit_one_case_per_rule_in_the_shape_ci_reads(damaged, tmp_path):
    outcome = CliRunner().invoke(main, ["check", str(damaged / "broken.safetensors"), "--baseline",
                                        str(damaged / "healthy.safetensors"), "--device", "cpu", "--format", "junit"])
    assert outcome.exit_code == 1, outcome.output  # blocked
    root = ET.fromstring(outcome.output.encode())
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    decision = check(damaged / "broken.safetensors", baseline=damaged / "healthy.safetensors", device="cpu").decision
    assert [c.get("name") for c in cases] == [r.rule_id for r in decision.rules]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {r.rule_id for r in decision.rules if r.status == "failed"}
    assert int(suite.get("failures")) == len(failed) and int(suite.get("tests")) == len(cases)
    assert failed["no-nonfinite-layers"].get("type") == "block"
    assert "block2" in failed["stable-rank-collapse"].text and "offending layers (1):" in failed["stable-rank-collapse"].text
    assert "block1" not in failed["stable-rank-collapse"].text.split("not judged")[0]  # the NaN layer: not evaluable
    # the rule in words: its threshold as a sentence and the result against the model's 4 layers
    assert failed["stable-rank-collapse"].get("message").startswith(
        "stable-rank-collapse [block]: stable rank falls by at most 50% from healthy.safetensors's, in every judged "
        "layer; 1 of the model's 4 layers outside")
    skipped = {c.get("name"): c.find("skipped").get("message") for c in cases if c.find("skipped") is not None}
    assert skipped == {"alpha-change": "skipped: no layer in the rule's scope",
                       "alpha-band-dense": "skipped: no layer in the rule's scope"}
    assert int(suite.get("skipped")) == 2
    verdict = {p.get("name"): p.get("value") for p in suite.find("properties")}["verdict"]
    assert verdict == "6 rules failed, 6 passed, 2 skipped (no layer in scope)"
    reference = _shape(_pytest_junit_reference(tmp_path))
    ours = _shape(root)
    for tag, attributes in ours.items():
        assert tag in reference, tag
        # failure/error "type" is in the Ant JUnit schema (Jenkins, GitLab read it); pytest leaves it out
        extra = {"type"} if tag in ("failure", "error") else set()
        assert attributes <= reference[tag] | extra, (tag, attributes - reference[tag])
