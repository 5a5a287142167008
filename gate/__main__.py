"""``python -m gate`` is the ``weightgate`` command."""

from gate.cli import main

main(prog_name="weightgate")
