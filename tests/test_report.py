"""The HTML report and charts: self-contained, decision first, offending layers marked, capped."""

from __future__ import annotations

import re
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from gate.check import check
from gate.report.html import ESD_FILE_CAP, write_report


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
    assert "no-nonfinite-layers" in html.split("<h2>Rules")[0]  # the reason comes with the decision
    row = re.search(r"<tr class='bad'><td>encoder\.layer\.1\.attention\.self\.key</td>", html)
    assert row, "the offending layer is highlighted"
    assert "baseline alpha" in html
    names = {f.name for f in files}
    assert {"report.html", "alpha_by_depth.svg", "mlh_by_depth.svg", "benford_digits.svg"} <= names
    esd = list((tmp_path / "out" / "esd").glob("*.svg"))
    assert len(esd) == 38  # every analysed layer but the NaN one has a spectrum
    svg = (tmp_path / "out" / "alpha_by_depth.svg").read_text()
    assert svg.startswith("<svg") and "baseline" in svg and "[2, 4]" in svg


def test_esd_files_are_capped_for_large_models(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(24, 24) for _ in range(60)])
    result = check(model, device="cpu", keep_spectra=True)
    write_report(tmp_path, result.scan, result.decision)
    assert len(list((tmp_path / "esd").glob("*.svg"))) == ESD_FILE_CAP
    assert "showing 12 of 60" in (tmp_path / "report.html").read_text()


def test_report_command(tmp_path, minilm_dir):
    proc = subprocess.run([sys.executable, "-m", "gate", "report", str(minilm_dir), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "decision approve" in proc.stdout
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "decision.json").is_file()
