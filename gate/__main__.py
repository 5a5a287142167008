"""``python -m gate`` is the ``weightgate`` command."""

from gate.cli.app import main

main(prog_name="weightgate")
