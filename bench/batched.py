"""Many small models trained at once as one batched model, for the paper reproductions.

On a 2-core CPU, training a hundred 8x8-digit classifiers one by one is dominated by per-batch
overhead; stacking K models into grouped convolutions and batched matrix products makes one step
train all K at once. Each model keeps its own data stream, learning rate and weight decay (Adam is
elementwise, written out here so those can differ per model), so the K models are exactly K
independent trainings. ``member(k)`` returns model k's weights under the names and shapes of the
equivalent unbatched module, which is what gate.scan and the MLH count see.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target)


class BatchedCNN(nn.Module):
    """K LeNet-like CNNs as in 000's appendix (two strided conv + LeakyReLU blocks, then a
    fully-connected classifier, no dropout): 8x8 -> c1 x 4x4 -> c2 x 2x2 -> 10."""

    def __init__(self, k: int, c1: int = 16, c2: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.k, self.c1, self.c2 = k, c1, c2
        torch.manual_seed(seed)
        # default PyTorch initialisation, one model at a time, then stacked
        conv1 = [nn.Conv2d(1, c1, 3, stride=2, padding=1) for _ in range(k)]
        conv2 = [nn.Conv2d(c1, c2, 3, stride=2, padding=1) for _ in range(k)]
        fc = [nn.Linear(c2 * 4, 10) for _ in range(k)]
        self.w1 = nn.Parameter(torch.cat([m.weight.data for m in conv1]))
        self.b1 = nn.Parameter(torch.cat([m.bias.data for m in conv1]))
        self.w2 = nn.Parameter(torch.cat([m.weight.data for m in conv2]))
        self.b2 = nn.Parameter(torch.cat([m.bias.data for m in conv2]))
        self.w3 = nn.Parameter(torch.stack([m.weight.data for m in fc]))
        self.b3 = nn.Parameter(torch.stack([m.bias.data for m in fc]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, K, 64), one image per model -> logits (B, K, 10)."""
        b = x.shape[0]
        h = nn.functional.leaky_relu(nn.functional.conv2d(x.view(b, self.k, 8, 8), self.w1, self.b1, 2, 1, 1, self.k))
        h = nn.functional.leaky_relu(nn.functional.conv2d(h, self.w2, self.b2, 2, 1, 1, self.k))
        h = h.view(b, self.k, self.c2 * 4)
        return torch.einsum("bki,koi->bko", h, self.w3) + self.b3

    def member(self, i: int) -> dict[str, torch.Tensor]:
        c1, c2 = self.c1, self.c2
        return {"conv1.weight": self.w1[i * c1:(i + 1) * c1].detach().clone(),
                "conv1.bias": self.b1[i * c1:(i + 1) * c1].detach().clone(),
                "conv2.weight": self.w2[i * c2:(i + 1) * c2].detach().clone(),
                "conv2.bias": self.b2[i * c2:(i + 1) * c2].detach().clone(),
                "fc.weight": self.w3[i].detach().clone(), "fc.bias": self.b3[i].detach().clone()}


class BatchedMLP(nn.Module):
    """K copies of the zoo's MLP (64 -> 128 -> 64 -> 10, ReLU)."""

    def __init__(self, k: int, seed: int = 0, widths: tuple[int, ...] = (64, 128, 64, 10)) -> None:
        super().__init__()
        self.k, self.widths = k, widths
        torch.manual_seed(seed)
        layers = [[nn.Linear(a, b) for _ in range(k)] for a, b in zip(widths, widths[1:])]
        self.weights = nn.ParameterList([nn.Parameter(torch.stack([m.weight.data for m in ms])) for ms in layers])
        self.biases = nn.ParameterList([nn.Parameter(torch.stack([m.bias.data for m in ms])) for ms in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for n, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.einsum("bki,koi->bko", h, w) + b
            if n < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    def member(self, i: int) -> dict[str, torch.Tensor]:
        state = {}
        for n, (w, b) in enumerate(zip(self.weights, self.biases)):
            state[f"net.{2 * n}.weight"] = w[i].detach().clone()
            state[f"net.{2 * n}.bias"] = b[i].detach().clone()
        return state


class BatchedAdam:
    """Adam (PyTorch's defaults, L2 weight decay as torch.optim.Adam) with a learning rate and a
    weight decay per model; every parameter's first dimension runs over models (in blocks)."""

    def __init__(self, params: list[nn.Parameter], k: int, lr: np.ndarray, weight_decay: np.ndarray) -> None:
        self.params, self.k, self.t = params, k, 0
        self.lr = torch.tensor(lr, dtype=torch.float32)
        self.wd = torch.tensor(weight_decay, dtype=torch.float32)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def _per_model(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        block = p.shape[0] // self.k
        return values.repeat_interleave(block).view(-1, *([1] * (p.ndim - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad + self._per_model(self.wd, p) * p
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step = self._per_model(self.lr, p) / (1 - beta1 ** self.t)
            p.sub_(step * m / ((v / (1 - beta2 ** self.t)).sqrt() + eps))
            p.grad = None


class Streams:
    """Each model's own endless stream of shuffled training indices, ``batch`` at a time."""

    def __init__(self, train_sets: list[np.ndarray], batch: int, seed: int) -> None:
        self.sets, self.batch = train_sets, batch
        self.rng = np.random.default_rng(seed)
        self.queues = [np.empty(0, dtype=np.int64) for _ in train_sets]

    def next(self) -> torch.Tensor:
        """(batch, K) indices into the data set."""
        columns = []
        for k, indices in enumerate(self.sets):
            while len(self.queues[k]) < self.batch:
                self.queues[k] = np.concatenate([self.queues[k], self.rng.permutation(indices)])
            columns.append(self.queues[k][:self.batch])
            self.queues[k] = self.queues[k][self.batch:]
        return torch.from_numpy(np.stack(columns, axis=1))


def batched_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over models of each model's mean cross-entropy (so each model's gradient is its own);
    ``weights`` (B, K) of 0/1 lets models use fewer samples per batch (smaller batch sizes)."""
    losses = nn.functional.cross_entropy(logits.permute(0, 2, 1), labels, reduction="none")  # (B, K)
    if weights is None:
        return losses.mean(0).sum()
    return ((losses * weights).sum(0) / weights.sum(0)).sum()


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, chunk: int = 600) -> torch.Tensor:
    """(N, K) predicted classes of every model on every sample."""
    parts = []
    for start in range(0, len(x), chunk):
        xs = x[start:start + chunk]
        parts.append(model(xs.unsqueeze(1).expand(-1, model.k, -1).contiguous()).argmax(-1))
    return torch.cat(parts)


def accuracy_on(correct: torch.Tensor, subsets: list[np.ndarray]) -> np.ndarray:
    """Model k's accuracy on its own subset of samples, from the (N, K) correctness matrix."""
    return np.array([float(correct[subset, k].float().mean()) if len(subset) else math.nan
                     for k, subset in enumerate(subsets)])
