"""The report's charts as a person sees them, measured in headless Chromium at the size the report
shows them: every text at least 10 px, inside its chart, and no two texts overlapping (offending
layers' names included, with more offenders than the chart names); the Marchenko-Pastur edge drawn
whenever a chart's key names it; log axes with at least 3 labelled ticks; an offending layer's ESD
with the baseline's spectrum over it. Also the Python-level facts the browser cannot see."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from gate.check import check
from gate.report.html import write_report
from gate.report.plots import NAMED_OFFENDERS, chart_style, report_charts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
pytestmark = [pytest.mark.server, pytest.mark.slow]  # starts Chromium

# For each inline chart: its texts' rendered font size (px), their boxes, and the chart's box.
MEASURE = """() => [...document.querySelectorAll('.charts svg')].map(svg => {
  const frame = svg.getBoundingClientRect();
  const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim()).map(t => {
    const box = t.getBoundingClientRect();
    const m = t.getScreenCTM();  // rotated texts (axis labels) too: the scale is the length of a column
    const size = parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
    return {text: t.textContent, size, left: box.left, right: box.right, top: box.top, bottom: box.bottom};
  });
  const ids = [...svg.querySelectorAll('g[id]')].map(g => g.id);
  return {frame: {left: frame.left, right: frame.right, top: frame.top, bottom: frame.bottom}, texts, ids};
})"""


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: run deploy/local/install-test-deps.sh (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1300, "height": 900})
        browser.close()


@pytest.fixture(scope="module")
def report(minilm_dir, tmp_path_factory):
    """MiniLM with six layers scaled x100 (more offenders than a chart names) against MiniLM."""
    folder = tmp_path_factory.mktemp("charts")
    state = load_file(str(minilm_dir / "model.safetensors"))
    names = [f"encoder.layer.{i}.attention.self.{kind}" for i in range(3) for kind in ("query", "value")]
    save_file({**state, **{f"{n}.weight": state[f"{n}.weight"] * 100 for n in names}}, str(folder / "x100.safetensors"))
    result = check(folder / "x100.safetensors", baseline=minilm_dir / "model.safetensors", device="cpu", keep_spectra=True)
    write_report(folder / "out", result.scan, result.decision, result.baseline_scan, esd_charts=4, pairs=result.pairs)
    return folder / "out", names


def _overlap(a: dict, b: dict, slack: float = 0.5) -> bool:
    return (min(a["right"], b["right"]) - max(a["left"], b["left"]) > slack
            and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > slack)


def test_chart_texts_are_readable_inside_their_frame_and_apart(page, report):
    out, names = report
    page.goto((out / "report.html").as_uri())
    charts = page.evaluate(MEASURE)
    assert len(charts) == 4 + 4  # alpha, MLH, log_spectral_norm, digits; four ESD charts
    for chart in charts:
        frame = chart["frame"]
        for text in chart["texts"]:
            assert text["size"] >= 10, text
            assert frame["left"] <= text["left"] and text["right"] <= frame["right"], text
            assert frame["top"] <= text["top"] and text["bottom"] <= frame["bottom"], text
        texts = chart["texts"]
        clashes = [(a["text"], b["text"]) for i, a in enumerate(texts) for b in texts[i + 1:] if _overlap(a, b)]
        assert not clashes, clashes
    alpha = charts[0]
    named = [t["text"] for t in alpha["texts"] if t["text"] in names]
    assert named == names[:NAMED_OFFENDERS] and len(names) > NAMED_OFFENDERS
    assert any("+2 more offending" in t["text"] for t in alpha["texts"])
    listed = page.locator("p.meta", has_text="Also offending").inner_text()
    assert all(name in listed for name in names[NAMED_OFFENDERS:])
    for esd in charts[4:]:
        keyed = any("Marchenko-Pastur" in t["text"] for t in esd["texts"])
        assert keyed == ("mp-bulk-edge" in esd["ids"])  # the edge is drawn exactly when the key names it
        for axis in ("xtick", "ytick"):
            assert sum(1 for i in esd["ids"] if i.startswith(axis)) >= 3, (axis, esd["ids"])
    offending_esd = [esd for esd in charts[4:] if any(names[0] in t["text"] for t in esd["texts"])]
    assert offending_esd and "baseline-esd" in offending_esd[0]["ids"]
    assert any("baseline's density" in t["text"] for t in offending_esd[0]["texts"])


def test_log_axes_get_three_labelled_ticks_on_narrow_ranges():
    """A spectrum within one digit step (1.0 to 1.3) and one across ten decades both get >= 3 ticks."""
    import xml.etree.ElementTree as ET

    charts = report_charts()
    rng = np.random.default_rng(0)
    svgs = []
    with charts.lock, chart_style():
        for evals in (np.sort(rng.uniform(1.0, 1.3, 300)), np.sort(10 ** rng.uniform(-6, 4, 300))):
            svgs.append(charts.esd.svg("narrow", evals, {"alpha": float("nan"), "xmin": float("nan")}))
    for svg in svgs:
        groups = [g.get("id") or "" for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")]
        assert sum(g.startswith("xtick") for g in groups) >= 3 and sum(g.startswith("ytick") for g in groups) >= 3


def test_mp_edge_is_the_layers_own():
    """The edge drawn is the scan's mp_edge: sigma^2 (sqrt N + sqrt M)^2 of an i.i.d. matrix with the
    layer's variance (numpy: the largest eigenvalue of a large random matrix sits at it)."""
    generator = torch.Generator().manual_seed(0)
    result = check({"w.weight": torch.randn(2000, 500, generator=generator)}, device="cpu", keep_spectra=True)
    row = result.scan.layers.iloc[0]
    evals = result.scan.spectra["w"]
    sigma2 = evals.sum() / (2000 * evals.size)
    assert row["mp_edge"] == pytest.approx(sigma2 * (2000 ** 0.5 + 500 ** 0.5) ** 2, rel=1e-9)
    assert evals.max() == pytest.approx(row["mp_edge"], rel=0.03)
    charts = report_charts()
    with charts.lock, chart_style():
        svg = charts.esd.svg("w", evals, row.to_dict())
    assert 'id="mp-bulk-edge"' in svg and "Marchenko-Pastur edge" in svg


def test_depth_chart_names_at_most_four_and_keeps_the_rest():
    layers = pd.DataFrame({"name": [f"l{i}" for i in range(10)], "status": ["ok"] * 10, "alpha": np.linspace(2, 5, 10)})
    charts = report_charts()
    with charts.lock, chart_style():
        svg = charts.depth.svg(layers, "alpha", offending={f"l{i}" for i in (1, 2, 3, 5, 7, 9)})
        unlabelled = list(charts.depth.unlabelled)
        again = charts.depth.svg(layers, "alpha")
    assert [f">l{i}<" in svg for i in (1, 2, 3, 5, 7, 9)] == [True] * 4 + [False] * 2
    assert unlabelled == ["l7", "l9"] and "+2 more offending" in svg
    assert "more offending" not in again and not charts.depth.unlabelled
