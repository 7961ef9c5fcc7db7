"""``python -m resrec`` (also what ``torchrun -m resrec`` runs)."""

from resrec.cli import main

main()
