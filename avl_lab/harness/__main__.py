"""``python -m avl_lab.harness``: print the task folder for lmms-eval's ``--include_path``.

It checks the installed torchvision first: a CUDA torchvision beside a CPU torch makes lmms-eval
fail inside transformers before it loads any model; this prints that as one ``error:`` line
(exit 2) instead, ahead of the ``lmms-eval`` command that uses ``$(python -m avl_lab.harness)``.
"""

import sys

from avl_lab.harness import TASKS_DIR
from avl_lab.torchvision_check import torchvision_problem


def main() -> int:
    problem = torchvision_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(TASKS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
