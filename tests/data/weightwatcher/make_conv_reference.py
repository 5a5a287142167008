"""Regenerate the WeightWatcher 0.7.7 reference for convolutions (1x1, 3x3, strided 3x3, 1x1 strided).

Writes ``conv_model.safetensors`` (the weights, so the test does not depend on torch's random
streams) and ``conv_details.csv`` (WeightWatcher's ``analyze()`` with defaults on those weights).
Run from the repository root with the bench extra installed (it pulls weightwatcher 0.7.7):

    python tests/data/weightwatcher/make_conv_reference.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent


def conv_model() -> torch.nn.Sequential:
    """1x1 conv (WeightWatcher halves its eigenvalues too), 3x3, strided 3x3, strided 1x1, and a
    rectangular 1x1 with more inputs than outputs (transposed slices)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(16, 48, kernel_size=1),
        torch.nn.Conv2d(48, 32, kernel_size=3, padding=1),
        torch.nn.Conv2d(32, 40, kernel_size=3, stride=2),
        torch.nn.Conv2d(40, 24, kernel_size=1, stride=2),
        torch.nn.Conv2d(24, 64, kernel_size=(1, 1), bias=False),
    )


def main() -> None:
    import weightwatcher

    assert weightwatcher.__version__ == "0.7.7", weightwatcher.__version__
    torch.manual_seed(11)
    model = conv_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, HERE / "conv_model.safetensors")
    model.load_state_dict(load_file(HERE / "conv_model.safetensors"))  # exactly the stored weights
    details = weightwatcher.WeightWatcher(model=model).analyze()
    details.to_csv(HERE / "conv_details.csv", index=False)
    print(details[["longname", "N", "M", "rf", "lambda_max", "alpha"]])


if __name__ == "__main__":
    main()
