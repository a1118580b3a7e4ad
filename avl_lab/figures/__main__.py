"""``python -m avl_lab.figures`` = ``python -m avl_lab figures`` (see :mod:`avl_lab.figures.cli`)."""

import sys

from avl_lab.figures.cli import main

if __name__ == "__main__":
    sys.exit(main())
