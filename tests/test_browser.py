"""The MLflow UI and the gate page in a real headless browser (Debian's Chromium driven by
Playwright): a gated version's page shows the gate's status and summary without scrolling, MLflow's
own "Promote model" dialog copies an approved version (the copy is then decided), its decision
run's artifact view shows the HTML report and an ESD chart, and the gate page (with JavaScript off)
shows the status, the reason and the promotion history from the ledger. Screenshots are saved under
test-output/ (not committed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from chromium import SCREENSHOTS, launched_chromium
from safetensors.torch import save_file

from deploy.local.mlflow_server import mlflow_server

from registry_helpers import decision_of, register_file

pytestmark = pytest.mark.server  # every test here runs against real servers

ENV = {"WEIGHTGATE_WORKER_TOKEN": "browser-test", "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def gated_version(tmp_path_factory, minilm_dir):
    from safetensors.torch import load_file

    workdir = tmp_path_factory.mktemp("ui")
    state = {k: v for k, v in load_file(str(minilm_dir / "model.safetensors")).items() if k.startswith("encoder.layer.0.")}
    save_file(state, str(workdir / "healthy.safetensors"))
    state["encoder.layer.0.output.dense.weight"] = state["encoder.layer.0.output.dense.weight"].clone()
    state["encoder.layer.0.output.dense.weight"][0, 0] = float("nan")
    save_file(state, str(workdir / "model.safetensors"))
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=ENV) as url:
        from mlflow import MlflowClient

        client = MlflowClient(url, url)
        version = client.get_model_version("ui-model", register_file(client, "ui-model", workdir / "model.safetensors"))
        approved = register_file(client, "ui-approved", workdir / "healthy.safetensors")
        client.create_registered_model("ui-production")  # where "Promote model" copies to
        run_worker(url)
        assert client.get_model_version("ui-approved", approved).tags["gate.status"] == "approved"
        run_id = client.get_model_version("ui-model", version.version).tags["gate.decision_run"]
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="blocked by weightgate"):  # a refused promotion, for the ledger
            client.set_registered_model_alias("ui-model", "champion", version.version)
        yield {"url": url, "version": version.version, "run_id": run_id, "approved": approved, "client": client,
               "experiment_id": client.get_run(run_id).info.experiment_id}


def run_worker(url: str) -> None:
    worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert worker.returncode == 0, worker.stderr[-2000:]


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(browser):
    return browser.new_page(viewport={"width": 1400, "height": 1000})


@pytest.fixture(scope="module")
def page_without_javascript(browser):
    """The gate page must work with scripts off (no client-side rendering at all)."""
    return browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 900}).new_page()


def test_gate_page_shows_status_reason_queue_and_history(page_without_javascript, gated_version):
    page = page_without_javascript
    page.goto(f"{gated_version['url']}/weightgate/?name=ui-model")
    assert page.get_by_role("heading", name="weightgate gate page").is_visible()
    row = page.locator(f"tr[data-model='ui-model'][data-version='{gated_version['version']}']")
    assert row.locator(".badge").inner_text() == "blocked"
    assert f"blocked: encoder.layer.0.output.dense: 1 NaN weight (of {1536 * 384})" in row.inner_text()
    assert page.get_by_text("Nothing is waiting for a scan.").is_visible()
    assert row.get_by_role("link", name="report").get_attribute("href").endswith(
        f"/runs/{gated_version['run_id']}/artifacts/weightgate/report.html")
    page.screenshot(path=str(SCREENSHOTS / "gate-page.png"), full_page=True)
    row.get_by_role("link", name=f"v{gated_version['version']}").click()
    page.get_by_role("heading", name="Promotion history").wait_for(timeout=60000)
    history = page.locator("table").last.inner_text()
    lines = [line for line in history.splitlines() if "\t" in line][1:]
    assert [line.split("\t")[4:7] for line in lines] == [
        ["alias-set", "champion", "refused"], ["decision", "blocked", "recorded"], ["registered", "", "recorded"]]
    assert "is blocked by weightgate" in lines[0]
    page.screenshot(path=str(SCREENSHOTS / "gate-page-model.png"), full_page=True)


def _in_view(page, locator) -> bool:
    """The element is inside the 1400 x 1000 window as the page opened, without any scrolling."""
    box = locator.bounding_box()
    return box is not None and page.evaluate("window.scrollY") == 0 and 0 <= box["y"] and box["y"] + box["height"] <= 1000


def test_model_version_page_shows_status_and_summary_without_scrolling(page, gated_version):
    page.goto(f"{gated_version['url']}/#/models/ui-model/versions/{gated_version['version']}")
    page.get_by_text("gate.status", exact=True).wait_for(timeout=60000)
    gate_keys = page.get_by_text("gate.", exact=False).filter(has_text="gate.")
    assert sorted(gate_keys.all_inner_texts()) == ["gate.decision_run", "gate.page", "gate.status", "gate.summary"]
    for text in ("gate.status", "gate.summary"):
        assert _in_view(page, page.get_by_text(text, exact=True)), text
    assert _in_view(page, page.get_by_text("blocked", exact=True))
    summary = page.get_by_text(f"blocked: encoder.layer.0.output.dense: 1 NaN weight (of {1536 * 384})")
    assert summary.count() == 1 and _in_view(page, summary)
    page.screenshot(path=str(SCREENSHOTS / "model-version-gate-tags.png"))  # the window, as a user first sees it


def test_promote_model_in_mlflow_ui_copies_an_approved_version(page, gated_version):
    """MLflow's own "Promote model" (a copy into another registered model, with the source's tags):
    the dialog closes onto the copy's page, and the copy is then decided by the worker."""
    client = gated_version["client"]
    page.goto(f"{gated_version['url']}/#/models/ui-approved/versions/{gated_version['approved']}")
    page.get_by_role("button", name="Promote model").click(timeout=60000)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Copy to model").wait_for(timeout=30000)
    dialog.locator("#selectedModel").click()
    dialog.locator("#selectedModel").fill("ui-production")
    # antd's visible option (its role="option" twin is an invisible accessibility stub)
    page.locator("[class*='select-item-option']", has_text="ui-production").first.click(timeout=30000)
    page.screenshot(path=str(SCREENSHOTS / "promote-model-dialog.png"))
    dialog.get_by_role("button", name="Promote").click()
    dialog.wait_for(state="hidden", timeout=120000)  # closed: MLflow created the copy
    page.wait_for_url("**/models/ui-production/versions/1", timeout=120000)
    copy = client.get_model_version("ui-production", "1")
    assert copy.source == f"models:/ui-approved/{gated_version['approved']}"
    assert copy.tags["gate.status"] == "pending"
    run_worker(gated_version["url"])
    row = decision_of(gated_version["url"], "ui-production", 1)
    assert row["status"] == "approved" and row["weights_sha256"] == \
        decision_of(gated_version["url"], "ui-approved", gated_version["approved"])["weights_sha256"]
    page.reload()
    page.get_by_text("approved", exact=True).wait_for(timeout=60000)


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
    assert image.evaluate("img => img.naturalWidth") > 300  # our ESD chart, loaded and rendered
    page.screenshot(path=str(SCREENSHOTS / "run-artifact-esd.png"), full_page=True)
