"""Progress bars: on a terminal the reading commands show bars (tensors read, layers solved,
MLflow's downloads); on a pipe, under --quiet and with machine output stderr stays clean. The
terminal is a real pseudo-terminal (os.openpty) given to the command as its stderr."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
ENV.pop(  # the variable a parent may have set must not decide for the command
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
COMMAND = [sys.executable, "-m", "gate"]


def _run(args: list[str], terminal: bool, timeout: float = 600) -> tuple[int, str, str]:
    """Run weightgate with stderr on a pseudo-terminal (``terminal``) or a pipe: (exit status, stdout, stderr)."""
    if not terminal:
        done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=timeout, env=ENV)
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(COMMAND + args, stdout=subprocess.PIPE, stderr=slave, env=ENV)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump)
    reader.start()
    stdout = process.stdout.read().decode()
    process.wait(timeout=timeout)
    reader.join(timeout=60)
    os.close(master)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("progress")
    generator = torch.Generator().manual_seed(0)
    state = {f"block{i}.weight": torch.randn(96, 64, generator=generator) for i in range(6)}
    save_file(state, str(directory / "a.safetensors"))
    save_file({k: v * 1.01 for k, v in state.items()}, str(directory / "b.safetensors"))
    return directory / "a.safetensors", directory / "b.safetensors"


def _bars(stderr: str, *descriptions: str) -> bool:
    return all(f"{description}: " in stderr for description in descriptions) and "|" in stderr


@pytest.mark.parametrize("command", ["scan", "check", "compare", "report", "rank"])
def test_bars_on_a_terminal_and_nothing_on_a_pipe(models, tmp_path, command):
    a, b = (str(path) for path in models)
    args = {"scan": ["scan", a], "check": ["check", a, "--baseline", b], "compare": ["compare", a, b],
            "report": ["report", a, "--out", str(tmp_path / "report")], "rank": ["rank", a, b]}[command]
    args += ["--device", "cpu"]
    status, stdout, stderr = _run(args, terminal=True)
    assert status in (0, 1), stderr  # random weights: check and report block (exit 1), as they should
    assert _bars(stderr, "reading"), stderr
    if command != "compare":  # compare solves inside its reading pass
        assert _bars(stderr, "solving"), stderr
    if command == "rank":
        assert _bars(stderr, "ranking"), stderr
    assert "reading" not in stdout  # the bars never mix into the output
    status, stdout, stderr = _run(args, terminal=False)
    assert status in (0, 1) and stderr == "", stderr
    assert stdout


@pytest.mark.parametrize("args", [["--quiet"], ["--format", "json"]])
def test_quiet_and_machine_output_show_no_bars_even_on_a_terminal(models, args):
    status, stdout, stderr = _run(["check", str(models[0]), "--device", "cpu", *args], terminal=True)
    assert status in (0, 1) and stderr.strip() == "", stderr
    assert stdout.strip()


@pytest.mark.server
@pytest.mark.slow
def test_mlflow_download_bars_follow_ours(models, tmp_path):
    """MLflow draws "Downloading artifacts" with tqdm even on a pipe; weightgate turns it off where
    its own bars are off (--quiet, machine formats, no terminal) and leaves it on a terminal."""
    from mlflow import MlflowClient

    from deploy.local.mlflow_server import mlflow_server

    from registry_helpers import register_file

    with mlflow_server(tmp_path) as url:
        client = MlflowClient(url, url)
        version = register_file(client, "progress-model", models[0])
        source = ["scan", f"models:/progress-model/{version}", "--tracking-uri", url, "--device", "cpu"]
        status, _, stderr = _run(source, terminal=True)
        assert status == 0 and "Downloading artifacts" in stderr and _bars(stderr, "reading", "solving"), stderr
        for args, terminal in ((source, False), (source + ["--quiet"], True), (source + ["--format", "json"], True)):
            status, stdout, stderr = _run(args, terminal=terminal)
            assert status == 0 and stderr.strip() == "", (args, terminal, stderr)
            assert "progress-model" in stdout
