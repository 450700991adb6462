"""`python -m mpqc` (and `torchrun -m mpqc search ...`): the command line."""
from mpqc.cli import main

main(prog_name="mpqc")
