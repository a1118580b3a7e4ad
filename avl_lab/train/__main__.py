"""``python -m avl_lab.train`` = ``python -m avl_lab train`` (see :mod:`avl_lab.train.cli`)."""

import sys

from avl_lab.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
