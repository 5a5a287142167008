"""gate.training against a real MLflow tracking store (sqlite): metrics with their steps, the final
summary, MLH early stopping, and the Lightning and Hugging Face callbacks on tiny runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gate.metrics.benford import BENFORD
from gate.training import MLHEarlyStopping, WeightMetricsTracker


def reference_mlh(tensors: list[torch.Tensor]) -> float:
    """MLH by hand: first digits from the decimal text of each float64 value, Pearson with Benford."""
    values = np.concatenate([t.detach().double().numpy().ravel() for t in tensors])
    values = np.abs(values[values != 0])
    digits = np.array([int(f"{v:.17e}"[0]) for v in values])
    frequencies = np.bincount(digits, minlength=10)[1:] / len(digits)
    return float(np.corrcoef(frequencies, BENFORD)[0, 1])


@pytest.fixture
def tracking(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield mlflow.MlflowClient()
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))


def data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=generator)
    return x, (x[:, :4].argmax(1))


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_tracker_logs_mlh_each_n_steps_and_final_summary(tracking):
    import mlflow

    model = tiny_mlp()
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with mlflow.start_run() as run:
        tracker = WeightMetricsTracker(model, every=3, spectral_every=2)
        for step in range(10):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if tracker.step(step) is not None:  # matrices only: the 3 weights, no biases
                expected[step] = reference_mlh([model[0].weight, model[2].weight, model[4].weight])
        tracker.finish(10)
    mlh = tracking.get_metric_history(run.info.run_id, "weights.mlh")
    assert sorted(m.step for m in mlh) == [0, 3, 6, 9]
    for metric in mlh:
        assert metric.value == pytest.approx(expected[metric.step], abs=1e-12)
    alpha_steps = sorted(m.step for m in tracking.get_metric_history(run.info.run_id, "weights.alpha_weighted"))
    assert alpha_steps == [0, 6]  # every second measurement
    final = tracking.get_run(run.info.run_id).data.metrics
    # Linear(16, 32): M = 16; Linear(32, 8): M = 8; Linear(8, 4): M = 4 < 8, skipped
    assert final["weights.final.num_analysed"] == 2 and final["weights.final.num_skipped"] == 1
    assert final["weights.final.mlh"] == pytest.approx(expected[9], abs=1e-12)  # no step after 9


def test_tracker_needs_an_active_run(tracking):
    from gate.errors import GateInputError

    tracker = WeightMetricsTracker(tiny_mlp())
    with pytest.raises(GateInputError, match="no active MLflow run"):
        tracker.step(0)
    assert WeightMetricsTracker(tiny_mlp(), sink=None).step(0)["mlh"] == pytest.approx(
        reference_mlh([p for p in tiny_mlp().parameters() if p.ndim == 2]), abs=1e-12)


def test_mlh_early_stopping_stops_after_patience_and_restores_best_weights():
    """Gradient descent on 0.5 * ||W - T||^2 with lr 0.5 halves W - T each epoch: W moves from
    uniform values in [0.5, 1) (digits 5-9 only) to a log-uniform target T (Benford-like), and
    equals T in float32 after some 30 epochs, so MLH rises and then provably stops changing."""
    generator = torch.Generator().manual_seed(3)
    target = torch.sign(torch.randn(64, 64, generator=generator)) * 10 ** (-3 * torch.rand(64, 64, generator=generator))
    model = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        model.weight.copy_(0.5 + 0.5 * torch.rand(64, 64, generator=generator))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = WeightMetricsTracker(model, sink=None)
    stopper = MLHEarlyStopping(model, patience=4, min_delta=1e-4)
    snapshots, series, stopped = [], [], False
    for epoch in range(60):  # trained on after the stop, to show that nothing better came later
        optimizer.zero_grad()
        (0.5 * ((model.weight - target) ** 2).sum()).backward()
        optimizer.step()
        snapshots.append(model.weight.detach().clone())
        series.append(reference_mlh([model.weight]))
        if not stopped:
            stopped = stopper.update(epoch, tracker.step(epoch)["mlh"])
    # the rule by hand over the reference series: best = last epoch that beat the best by > min_delta
    best, best_epoch, waited, stop_epoch = -np.inf, None, 0, None
    for epoch, value in enumerate(series):
        if value > best + 1e-4:
            best, best_epoch, waited = value, epoch, 0
        else:
            waited += 1
            if waited == 4:
                stop_epoch = epoch
                break
    assert best_epoch > 3 and series[best_epoch] > series[0] + 0.5  # MLH really rose before the plateau
    # a float32 fixed point next to T (within rounding): the weights, and so MLH, no longer change
    assert torch.equal(snapshots[-1], snapshots[-2]) and torch.allclose(snapshots[-1], target, rtol=1e-6, atol=0)
    assert max(series[stop_epoch:]) <= series[best_epoch] + 1e-4  # nothing after the stop was better
    assert (stopper.best_step, stopper.stopped_step) == (best_epoch, stop_epoch) == (best_epoch, best_epoch + 4)
    assert stopper.best_mlh == pytest.approx(series[best_epoch], abs=1e-12)
    assert stopper.restore()
    assert torch.equal(model.weight.detach(), snapshots[best_epoch])


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_import_loads_no_framework():
    code = ("import sys, gate.training; "
            "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


class LitMLP:  # built lazily: pytorch_lightning is imported only by the test that needs it
    @staticmethod
    def make():
        import pytorch_lightning as pl

        class Module(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = tiny_mlp()

            def training_step(self, batch, _):
                x, y = batch
                return nn.functional.cross_entropy(self.net(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Module()


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_lightning_callback_logs_through_mlflow_logger(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    from gate.training.lightning import LightningWeightMetrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(experiment_name="lit", tracking_uri=uri)
    callback = LightningWeightMetrics(every_n_steps=2, every_n_epochs=None)
    trainer = pl.Trainer(max_epochs=2, logger=logger, callbacks=[callback], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    module = LitMLP.make()
    x, y = data(32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer.fit(module, loader)
    import mlflow

    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(logger.run_id, "weights.mlh")
    assert sorted(m.step for m in history) == [2, 4, 6, 8]  # 4 batches x 2 epochs
    last = [m for m in history if m.step == 8][0]
    assert last.value == pytest.approx(reference_mlh([p for p in module.parameters() if p.ndim == 2]), abs=1e-12)
    assert client.get_run(logger.run_id).data.metrics["weights.final.num_analysed"] == 2


@pytest.fixture
def transformers_trainer():
    """transformers' Trainer (imported only by the test that uses it)."""
    from transformers import Trainer, TrainingArguments

    return Trainer, TrainingArguments


class HFModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_huggingface_callback_logs_to_active_run_and_stops_early(tracking, transformers_trainer, tmp_path):
    import mlflow

    from gate.training.huggingface import HFWeightMetricsCallback

    Trainer, TrainingArguments = transformers_trainer
    x, y = data(32)
    dataset = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    model = HFModel()
    callback = HFWeightMetricsCallback(every_n_steps=1, every_n_epochs=None, patience=1, min_delta=1.0)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=6, per_device_train_batch_size=8,
                             report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                             learning_rate=0.1, disable_tqdm=True)
    with mlflow.start_run() as run:
        state = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    # min_delta 1.0: no MLH rise can count, so the second measurement ends training (patience 1)
    history = tracking.get_metric_history(run.info.run_id, "weights.mlh")
    assert sorted(m.step for m in history) == [1, 2]
    assert state.global_step == 2
    assert callback.monitor.stopping.best_step == 1
    first = [m.value for m in history if m.step == 1][0]
    assert reference_mlh([p for p in model.parameters() if p.ndim == 2]) == pytest.approx(first, abs=1e-12)
    assert tracking.get_run(run.info.run_id).data.metrics["weights.final.num_analysed"] == 2
