"""`python -m pipeline ...` is the same as the `blurvid` command."""

from pipeline.cli import main

main(prog_name="blurvid")
