"""Four verdicts as a person meets them, in headless Chromium against a real gated MLflow server and
worker: a first version approved without a baseline, a one-NaN block, a layer scaled x100 and a
per-channel int4 copy that warns, all versions of all-MiniLM-L6-v2. The gate page (JavaScript off)
and each decision run's report say the same counts and findings; screenshots of both go to
test-output/ (not committed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from chromium import SCREENSHOTS, launched_chromium
from safetensors.torch import load_file, save_file

from deploy.local.mlflow_server import mlflow_server

from registry_helpers import register_file

ENV = {"WEIGHTGATE_WORKER_TOKEN": "verdict-test", "MLFLOW_DISABLE_TELEMETRY": "true"}
MODEL = "minilm-verdicts"
QUERY = "encoder.layer.2.attention.self.query.weight"
pytestmark = [pytest.mark.server, pytest.mark.slow]  # starts an MLflow server and Chromium


def _int4_per_row(weight: torch.Tensor) -> torch.Tensor:
    """A symmetric 4-bit round trip with one scale per output row (per-channel), as int4 tools store it."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 7
    return (torch.round(weight / scale).clamp(-8, 7) * scale).to(weight.dtype)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, minilm_dir):
    workdir = tmp_path_factory.mktemp("verdicts")
    state = load_file(str(minilm_dir / "model.safetensors"))
    nan = {k: v.clone() for k, v in state.items()}
    nan["encoder.layer.1.attention.self.key.weight"][0, 0] = float("nan")
    versions = {"approved": state, "nan": nan, "x100": {**state, QUERY: state[QUERY] * 100},
                "int4": {k: _int4_per_row(v) if v.ndim == 2 and k.endswith(".weight") and v.shape[0] > 2 else v
                         for k, v in state.items()}}
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=ENV) as url:
        from mlflow import MlflowClient

        client = MlflowClient(url, url)
        numbers = {}
        for name, weights in versions.items():
            (workdir / name).mkdir()
            save_file(weights, str(workdir / name / "model.safetensors"))
            numbers[name] = register_file(client, MODEL, workdir / name / "model.safetensors")
        worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device",
                                 "cpu"], capture_output=True, text=True, timeout=1800, env={**os.environ, **ENV})
        assert worker.returncode == 0, worker.stderr[-2000:]
        reports = {}
        for name, number in numbers.items():
            run_id = client.get_model_version(MODEL, number).tags["gate.decision_run"]
            reports[name] = client.download_artifacts(run_id, "weightgate", str(workdir / f"run-{name}"))
        yield {"url": url, "client": client, "versions": numbers, "reports": reports}


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as launched:
        yield launched


EXPECTED = {  # the gate.summary each version gets (first line of its row and of its report)
    "approved": "approved: 6 rules passed, 8 need a baseline (first version)",
    # one cause, one finding: the NaN layer is named once, with what is wrong with it
    "nan": f"blocked: encoder.layer.1.attention.self.key: 1 NaN weight (of {384 * 384}) (no-nonfinite-layers)"
           " | 1 rule failed, 13 passed",
    "x100": "blocked: encoder.layer.2.attention.self.query: largest singular value x100 of v1's (spectral-norm-change)"
            " | 1 rule failed, 13 passed",
    "int4": "warned: model: 4-bit per-channel quantisation of v1, weights moved ",
}


def test_gate_page_says_what_was_checked(browser, registry):
    page = browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{registry['url']}/weightgate/model?name={MODEL}")
    rows = {name: page.locator(f"tr#v{number}") for name, number in registry["versions"].items()}
    for name, row in rows.items():
        assert EXPECTED[name] in row.locator(".summary").inner_text(), (name, row.inner_text())
        row.locator("details.rules summary").click()  # the fold-out opens without scripts
    approved = rows["approved"].locator("details.rules")
    assert approved.locator("summary").inner_text() == "6 rules passed, 8 need a baseline (first version)"
    assert "failed" not in approved.inner_text()  # no "all failed rules" fold-out on an approved version
    assert approved.locator("li").first.inner_text().startswith("SKIP (need a baseline: first version): ")
    x100 = rows["x100"].locator("details.rules")
    assert x100.locator("li.fail").inner_text().startswith(
        "FAIL spectral-norm-change [block]: lambda_max within 10x of v1's either way, in every judged layer; "
        "1 of the model's 40 layers outside")
    assert "largest singular value x100 of v1's" in x100.locator("li.changed").inner_text()
    assert rows["int4"].locator(".badge").inner_text() == "warned"
    page.screenshot(path=str(SCREENSHOTS / "verdicts-gate-page.png"), full_page=True)


@pytest.mark.parametrize("name", ["approved", "nan", "x100", "int4"])
def test_report_says_the_same(browser, registry, name):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"file://{registry['reports'][name]}/report.html")
    headline = page.locator("p.counts").first.inner_text()
    assert headline.startswith(EXPECTED[name]), headline
    tags = registry["client"].get_model_version(MODEL, registry["versions"][name]).tags
    assert headline == tags["gate.summary"]
    if name == "x100":
        changed = page.locator("h2:has-text('What changed') + table").inner_text()
        assert "largest singular value x100 of v1's" in changed and "cosine 1 with v1" in changed
        assert page.locator("svg g#baseline-esd").count() == 1  # the offending layer's ESD over the baseline's
    page.screenshot(path=str(SCREENSHOTS / f"verdict-report-{name}.png"), full_page=True)


def test_queue_counts_a_rescan_from_its_request(browser, registry):
    """Last in this module: it queues v1 again. Before, nothing waits ("nothing pending", not "- s");
    after, v1 has waited since the rescan was requested, not since its registration, and the gate
    page says it waits and why."""
    import json
    import time

    url, env = registry["url"], {**os.environ, **ENV}
    queue = [sys.executable, "-m", "gate", "queue", "--tracking-uri", url]
    idle = subprocess.run(queue, capture_output=True, text=True, timeout=300, env=env)
    assert idle.returncode == 0 and idle.stdout.splitlines()[-1] == "nothing pending", idle.stdout + idle.stderr
    version = registry["versions"]["approved"]
    registered = registry["client"].get_model_version(MODEL, version).creation_timestamp / 1000
    requested_after = time.time()
    rescan = subprocess.run([sys.executable, "-m", "gate", "rescan", MODEL, version, "--tracking-uri", url],
                            capture_output=True, text=True, timeout=300, env=env)
    assert rescan.returncode == 0, rescan.stderr
    waiting = subprocess.run(queue + ["--format", "json"], capture_output=True, text=True, timeout=300, env=env)
    age = json.loads(waiting.stdout)["oldest_pending_age_seconds"]
    # the tag has whole seconds: the request may read up to a second earlier than it was made
    assert age <= time.time() - requested_after + 1.5 and requested_after - registered > 2
    page = browser.new_context(java_script_enabled=False).new_page()
    page.goto(f"{url}/weightgate/model?name={MODEL}")
    cell = page.locator(f"tr#v{version} td.reason").inner_text()
    assert cell.startswith("waiting for its scan") and "rescan requested by" in cell
    # the earlier decision stays in the ledger and its decision run; the row says only that it waits
    assert EXPECTED["approved"] not in cell
