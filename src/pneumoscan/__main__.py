"""`python -m pneumoscan ...` runs the command-line tool (also what torchrun and a GPU box without the entry
point need)."""

import sys

from pneumoscan.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
