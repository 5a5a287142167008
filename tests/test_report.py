"""The HTML report and its matplotlib charts: self-contained, decision first, escaped, offending
layers marked, baseline visible above this version, lines clipped to the axes, ESDs capped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from gate.check import check
from gate.cli.app import main
from gate.report.html import ESD_CAP, esd_layers, write_report
from gate.report.plots import chart_style, report_charts

SVG = "{http://www.w3.org/2000/svg}"


def _group(svg: str, gid: str) -> ET.Element:
    found = [g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("id") == gid]
    assert found, f"no artist {gid} in the chart"
    return found[0]


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_report_is_self_contained_and_decision_first(tmp_path, minilm_dir):
    state = load_file(str(minilm_dir / "model.safetensors"))
    state["encoder.layer.1.attention.self.key.weight"][0, 0] = float("nan")
    damaged = tmp_path / "damaged.safetensors"
    save_file(state, str(damaged))
    result = check(damaged, baseline=minilm_dir / "model.safetensors", device="cpu", keep_spectra=True)
    files = write_report(tmp_path / "out", result.scan, result.decision, result.baseline_scan)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)\s*=\s*['\"]?https?:", html)  # nothing fetched from anywhere
    assert html.index("BLOCK") < html.index("<h2>Charts") < html.index("<h2>Layers")
    assert f"blocked: encoder.layer.1.attention.self.key: 1 NaN weight (of {384 * 384})" in html.split("<h2>Rules")[0]
    assert "no-nonfinite-layers" in html.split("<h2>Rules")[0]  # the reason comes with the decision
    assert re.search(r'<tr class="bad"><td>encoder\.layer\.1\.attention\.self\.key</td>', html)
    assert "baseline alpha" in html
    assert {"report.html", "alpha_by_depth.svg", "mlh_by_depth.svg", "benford_digits.svg"} <= {f.name for f in files}
    assert len(list((tmp_path / "out" / "esd").glob("*.svg"))) == ESD_CAP
    depth = (tmp_path / "out" / "alpha_by_depth.svg").read_text()
    assert depth.startswith("<svg")
    order = [g.get("id") for g in ET.fromstring(depth).iter(f"{SVG}g") if g.get("id") in ("current", "baseline")]
    assert order == ["current", "baseline"]  # the baseline is drawn after (above) this version
    assert "[2, 4]" in depth and "baseline" in depth


def _ids(svg: str) -> set[str]:
    return {g.get("id") for g in ET.fromstring(svg).iter(f"{SVG}g")}


def test_fit_line_is_clipped_to_the_axes():
    rng = np.random.default_rng(0)
    evals = np.sort(rng.pareto(2.0, 400) + 1.0)
    charts = report_charts()
    with charts.lock, chart_style():
        # a fit whose line would leave the frame (steep alpha from a small xmin)
        svg = charts.esd.svg("layer <b>&", evals, {"alpha": 6.0, "xmin": 1.0, "bulk_max": 3.0})
        digits = charts.digits.svg([30, 18, 12, 10, 8, 7, 6, 5, 4])
    assert "layer &lt;b&gt;&amp;" in svg  # titles escaped
    for gid in ("powerlaw-fit", "xmin", "mp-bulk-edge"):
        paths = list(_group(svg, gid).iter(f"{SVG}path"))
        assert paths and all(p.get("clip-path", "").startswith("url(#") for p in paths), gid
    clip_ids = {c.get("id") for c in ET.fromstring(svg).iter(f"{SVG}clipPath")}
    assert len(clip_ids) == 1  # one clip rectangle: the axes
    assert "α = 6.00 from xmin = 1" in svg
    assert _group(digits, "benford") is not None and _group(digits, "digits") is not None


def test_charts_redrawn_for_the_next_report_keep_nothing_of_the_last():
    """The figures are reused across reports: a chart drawn after one with a baseline, offending
    layers, a band and a fit shows none of them when its own data has none."""
    layers = pd.DataFrame({"name": [f"l{i}" for i in range(5)], "status": ["ok"] * 5,
                           "alpha": [2.5, 3.0, 9.0, 3.5, 4.0], "mlh": [0.9, 0.95, 0.5, 0.92, 0.91]})
    evals = np.sort(np.random.default_rng(1).pareto(2.0, 300) + 1.0)
    charts = report_charts()
    with charts.lock, chart_style():
        first = charts.depth.svg(layers, "alpha", layers, band=(2.0, 4.0), offending={"l2"})
        second = charts.depth.svg(layers, "mlh")
        fitted = charts.esd.svg("a", evals, {"alpha": 3.0, "xmin": 2.0, "bulk_max": 1.5})
        unfitted = charts.esd.svg("b", evals, {"alpha": float("nan"), "xmin": float("nan")})
    assert {"current", "baseline", "offending", "band"} <= _ids(first) and ">l2<" in first
    assert "current" in _ids(second) and not {"baseline", "offending", "band"} & _ids(second)
    assert ">l2<" not in second and "[2, 4]" not in second
    assert {"powerlaw-fit", "xmin", "mp-bulk-edge"} <= _ids(fitted)
    assert not {"powerlaw-fit", "xmin", "mp-bulk-edge"} & _ids(unfitted) and "no power-law fit" in unfitted


def test_esd_charts_go_to_offending_layers_then_the_extreme_alphas():
    names = ["a", "b", "c", "d", "e", "f"]
    alphas = pd.Series({"a": 3.0, "b": 1.5, "c": float("nan"), "d": 7.0, "e": 2.5, "f": 4.0})
    # offending first (model order), then lowest, highest, second lowest, second highest..., no fit last
    assert esd_layers(names, alphas, {"f", "a"}) == ["a", "f", "b", "d", "e", "c"]
    assert esd_layers(names, None, set()) == names


def test_layer_names_are_escaped_in_the_report(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"x<script>": torch.nn.Linear(24, 24)})
    result = check(model, device="cpu", keep_spectra=True)
    write_report(tmp_path, result.scan, result.decision)
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html and "x&lt;script&gt;" in html


def test_esd_charts_are_capped_for_large_models(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(24, 24) for _ in range(30)])
    result = check(model, device="cpu", keep_spectra=True)
    write_report(tmp_path, result.scan, result.decision)
    assert len(list((tmp_path / "esd").glob("*.svg"))) == ESD_CAP
    assert f"showing {ESD_CAP} of 30" in (tmp_path / "report.html").read_text()


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_report_command(tmp_path, minilm_dir):
    result = CliRunner().invoke(main, ["report", str(minilm_dir), "--out", str(tmp_path / "r"), "--esd-charts", "5"])
    assert result.exit_code == 0, result.output
    assert "decision approve" in result.stdout
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "decision.json").is_file()
    assert len(list((tmp_path / "r" / "esd").glob("*.svg"))) == 5
    assert "showing 5 of 39" in (tmp_path / "r" / "report.html").read_text()


def test_report_of_a_model_with_no_analysed_layer(tmp_path):
    """Every layer non-finite: no alpha column at all; the report still says why it blocked."""
    weight = torch.full((32, 32), float("nan"))
    model = torch.nn.Linear(32, 32)
    with torch.no_grad():
        model.weight.copy_(weight)
    result = check(model, device="cpu", keep_spectra=True)
    write_report(tmp_path, result.scan, result.decision)
    html = (tmp_path / "report.html").read_text()
    assert "BLOCK" in html and "some-layer-analysed" in html
