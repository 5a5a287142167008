"""``python -m gate`` is the ``weightgate`` command."""

from gate.cli.main import main

main(prog_name="weightgate")
