"""The MLflow UI in a real headless browser (Debian's Chromium driven by Playwright): a gated
version's page shows the gate tags, and its decision run's artifact view shows the HTML report and
an ESD image. Screenshots are saved under test-output/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mlflow_plugin.local_server import mlflow_server
from registry_helpers import register_file

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output"
ENV = {"WEIGHTGATE_WORKER_TOKEN": "browser-test", "MLFLOW_DISABLE_TELEMETRY": "true"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def gated_version(tmp_path_factory, minilm_dir):
    from safetensors.torch import load_file

    workdir = tmp_path_factory.mktemp("ui")
    state = {k: v for k, v in load_file(str(minilm_dir / "model.safetensors")).items() if k.startswith("encoder.layer.0.")}
    state["encoder.layer.0.output.dense.weight"] = state["encoder.layer.0.output.dense.weight"].clone()
    state["encoder.layer.0.output.dense.weight"][0, 0] = float("nan")
    save_file(state, str(workdir / "model.safetensors"))
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=ENV) as url:
        from mlflow import MlflowClient

        client = MlflowClient(url, url)
        version = client.get_model_version("ui-model", register_file(client, "ui-model", workdir / "model.safetensors"))
        worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device",
                                 "cpu"], capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
        assert worker.returncode == 0, worker.stderr[-2000:]
        run_id = client.get_model_version("ui-model", version.version).tags["gate.decision_run"]
        yield {"url": url, "version": version.version, "run_id": run_id,
               "experiment_id": client.get_run(run_id).info.experiment_id}


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: run deploy/local/install-test-deps.sh (make test does)")
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_model_version_page_shows_gate_tags(page, gated_version):
    page.goto(f"{gated_version['url']}/#/models/ui-model/versions/{gated_version['version']}")
    page.get_by_text("gate.status", exact=True).wait_for(timeout=60000)
    page.get_by_text("gate.status", exact=True).scroll_into_view_if_needed()
    assert page.get_by_text("blocked", exact=True).count() >= 1
    assert page.get_by_text("gate.decision_run", exact=True).count() == 1
    page.screenshot(path=str(SCREENSHOTS / "model-version-gate-tags.png"), full_page=True)


def test_run_artifacts_show_report_and_esd_image(page, gated_version):
    page.goto(f"{gated_version['url']}/#/experiments/{gated_version['experiment_id']}/runs/"
              f"{gated_version['run_id']}/artifacts")
    page.get_by_text("Select a file to preview").wait_for(timeout=60000)  # the artifact tree has loaded
    page.get_by_text("weightgate", exact=True).last.click()  # the folder (breadcrumb and sidebar come first)
    page.get_by_text("report.html", exact=True).click(timeout=30000)
    report = page.frame_locator("iframe").first
    report.get_by_text("BLOCK", exact=True).wait_for(timeout=60000)
    assert report.get_by_text("no-nonfinite-layers").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "run-artifact-report.png"), full_page=True)
    page.get_by_text("esd", exact=True).click()
    page.get_by_text("encoder.layer.0.attention.self.query.svg", exact=True).click(timeout=30000)
    image = page.locator("img[src^='blob:']").first  # the artifact viewer shows images from blob URLs
    image.wait_for(timeout=60000)
    assert image.evaluate("img => img.naturalWidth") == 480  # our ESD chart, loaded and rendered
    page.screenshot(path=str(SCREENSHOTS / "run-artifact-esd.png"), full_page=True)
