"""`python -m gsae_cli ...`: the same CLI as `gsae`, for launchers that take a module (torchrun -m)."""

from gsae_cli.cli import main

main()
