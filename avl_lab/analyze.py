"""``python -m avl_lab.analyze {modality-attention,sparsity,layer-ppci,step-ppci,coverage,drift,all} [key=value ...]``

The paper's attention observations on a model and dataset: Fig 1 (attention share of system /
image / instruction tokens per decode step), Fig 3 (smallest fraction of image tokens holding 80%
of the image attention, per layer; heat map of one sample), Fig 4 (p% PPCI between layer 0 and
every layer), Fig 5 (p% PPCI between decode step 0 and each later step, per layer). And two
per-head ones: coverage (share of the answer's image tokens, where the task knows them, inside
the top-S% set by the last prompt token's attention, per layer and head and for the head
average) and drift (p% PPCI between the last prompt token's image attention and each decode
step's, per layer and head). Keys: the
evaluate CLI's (``model=...``, ``data=...``, ``data.limit=16``, ``batch_size=4``,
``generation.max_new_tokens=20``) and ``out=DIR``. Writes ``<name>.csv`` and ``<name>.png``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from avl_lab.analysis.run import ANALYSES, analyze
from avl_lab.evaluation.config import ConfigError, load_config
from avl_lab.models import default_model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    choices = (*ANALYSES, "all")
    if not argv or argv[0] not in choices:
        print(f"usage: python -m avl_lab.analyze {{{','.join(choices)}}} [key=value ...]\n{__doc__}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    names = list(ANALYSES) if argv[0] == "all" else [argv[0]]
    rest = [a for a in argv[1:] if not a.startswith("out=")]
    out = next((a[4:] for a in argv[1:] if a.startswith("out=")), "runs/analysis")
    try:
        cfg = load_config([f"model={default_model()}", "data=synth-docvqa", "data.limit=16",
                           "batch_size=4", "generation.max_new_tokens=20", *rest])
        tables = analyze(names, cfg, Path(out))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, df in tables.items():
        if df.empty:
            print(f"== {name}: nothing to measure on this task (see the warning)")
            continue
        num = df.select_dtypes("number")
        keys = [c for c in ("step", "layer", "head", "S", "p", "modality") if c in df.columns]
        if "head" in keys:  # per-head tables: mean over steps
            keys = [k for k in keys if k != "step"]
        value = next(c for c in ("share", "fraction", "coverage", "ppci") if c in df.columns)
        print(f"== {name} ({Path(out) / name}.csv)")
        print(df.groupby(keys)[value].mean().round(4).to_string() if keys else num.mean())
    return 0


if __name__ == "__main__":
    sys.exit(main())
