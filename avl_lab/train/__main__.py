"""``python -m avl_lab.train [key=value ...]``: train and export ``avl-tiny``.

Examples::

    python -m avl_lab.train max_minutes=95 out_dir=runs/train/avl-tiny
    python -m avl_lab.train max_steps=20 model.num_hidden_layers=2 export_dir=/tmp/tiny
"""

from __future__ import annotations

import json
import logging
import sys

from avl_lab.train import load_train_config, train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_train_config(sys.argv[1:] if argv is None else argv)
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
