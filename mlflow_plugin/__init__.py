"""weightgate's MLflow integration: server-side enforcement, the scan worker, and the override.

Importing this package has no side effects; ``mlflow server --app-name weightgate`` loads
:func:`mlflow_plugin.server.app.create_app` through the ``mlflow.app`` entry point.
"""
