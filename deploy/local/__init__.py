"""Everything on loopback with no container engine: an MLflow server, Debian's PostgreSQL and a Ray
cluster as subprocesses, for ``make demo``, the integration tests and the benches. Not shipped in the
wheel (``pyproject.toml`` packages only ``gate`` and ``mlflow_plugin``)."""
