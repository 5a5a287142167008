"""Whether this process may start services: a test lane without servers (``make test-fast``) says no.

Every process the harness starts (an MLflow server, PostgreSQL, a Ray node) first calls
:func:`allow_processes`, which reads the environment at call time, so no way of importing the harness
gets past it. tests/conftest.py sets the variable for every test not marked ``server``.
"""

from __future__ import annotations

import os

FORBIDDEN = "WEIGHTGATE_NO_SERVICE_PROCESSES"  # set (to the test's id) where no service may start


def allow_processes(what: str) -> None:
    """Raises where the environment forbids starting ``what``, naming who forbade it."""
    forbidden_by = os.environ.get(FORBIDDEN)
    if forbidden_by:
        raise RuntimeError(f"{forbidden_by} starts {what} but is not marked @pytest.mark.server "
                           "(make test-fast leaves server tests out)")
