"""The worker's judge reads each model once: against a real MLflow server, a version and its
baseline are each opened once, every tensor of each is loaded once, and each is closed once, by
the judge that opened it (gate.check.check reads an opened source and leaves it open)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from gate.sources import TensorInfo, WeightSource, open_source

from registry_helpers import register_file, run_params, two_minilm_matrices

pytestmark = [pytest.mark.server, pytest.mark.slow]


class CountingSource(WeightSource):
    """A real source (the version's files downloaded from the server) whose loads and closes are counted."""

    def __init__(self, inner: WeightSource) -> None:
        self._inner = inner
        self.description = inner.description
        self.loads: dict[str, int] = {}
        self.closes = 0

    def tensor_infos(self) -> list[TensorInfo]:
        return self._inner.tensor_infos()

    def load(self, name: str) -> torch.Tensor:
        self.loads[name] = self.loads.get(name, 0) + 1
        return self._inner.load(name)

    def close(self) -> None:
        self.closes += 1
        self._inner.close()


def test_version_and_baseline_are_each_read_once(mlflow_tracking_uri, tmp_path, minilm_dir):
    from mlflow import MlflowClient

    from mlflow_plugin.service.judge import VersionJudge, WorkerSettings
    from mlflow_plugin.service.webhook import TagRecorder

    url = mlflow_tracking_uri
    client = MlflowClient(url, url)
    matrices = two_minilm_matrices(minilm_dir)
    save_file(matrices, str(tmp_path / "model.safetensors"))
    first = register_file(client, "read-once", tmp_path / "model.safetensors")
    second = register_file(client, "read-once", tmp_path / "model.safetensors")
    opened: list[tuple[str, CountingSource]] = []

    def open_counting(uri: str) -> CountingSource:
        source = CountingSource(open_source(uri, tracking_uri=url))
        opened.append((uri, source))
        return source

    judge = VersionJudge(WorkerSettings(url, device="cpu"), TagRecorder(client, url), client=client,
                         open_weights=open_counting)
    assert judge.process(client.get_model_version("read-once", first)) == "approved"
    assert judge.process(client.get_model_version("read-once", second)) == "approved"
    assert run_params(client, client.get_model_version("read-once", second).tags)["baseline"] == f"models:/read-once/{first}"
    # The first version alone (no baseline yet); then the second and, once, its baseline the first.
    assert [uri for uri, _ in opened] == [f"models:/read-once/{first}", f"models:/read-once/{second}",
                                         f"models:/read-once/{first}"]
    for uri, source in opened:
        assert source.loads == {name: 1 for name in matrices}, uri
        assert source.closes == 1, uri
