"""The ``weightgate`` command line, one module per command group."""
