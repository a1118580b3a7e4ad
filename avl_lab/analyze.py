"""``python -m avl_lab analyze {modality-attention,sparsity,layer-ppci,step-ppci,coverage,drift,all} [key=value ...]``

The paper's attention observations on a model and dataset: Fig 1 (attention share of system /
image / instruction tokens per decode step), Fig 3 (smallest fraction of image tokens holding 80%
of the image attention, per layer; heat map of one sample), Fig 4 (p% PPCI between layer 0 and
every layer), Fig 5 (p% PPCI between decode step 0 and each later step, per layer). And two
per-head ones: coverage (share of the answer's image tokens, where the task knows them, inside
the top-S% set by each of VisionTiering's ranking signals — the last prompt token's attention,
the paper's, and window / colsum / attn_vnorm / key_norm — per layer and KV head and for the
head average, with bootstrap intervals in ``coverage_intervals.csv``) and drift (p% PPCI
between the last prompt token's image attention and each decode step's, per layer and query
head). Keys: the evaluate CLI's (``model=...``, ``data=...``, ``data.limit=16``, ``batch_size=4``,
``generation.max_new_tokens=20``) and ``out_dir=DIR``. Writes ``<name>.csv`` and ``<name>.png``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from avl_lab.cli.app import checked, run_verb
from avl_lab.cli.args import parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import Section, help_text
from avl_lab.cli.loader import load_structured, split_keys
from avl_lab.errors import ConfigError, InputFileError
from avl_lab.evaluation.config import EvalConfig, load_config
from avl_lab.experiments.analysis.run import ANALYSES

__all__ = ["AnalyzeArgs", "main"]

CHOICES = (*ANALYSES, "all")
#: Analyses that compare decode steps: they need at least one decode step (2 new tokens).
DECODE = ("modality-attention", "step-ppci", "drift")
#: Evaluation keys the analyses do not use (attention is read under the full cache, greedy,
#: on the CPU).
IGNORED = {
    "policy": "attention is recorded under the full cache",
    "seed": "no policy draws random numbers here",
    "accelerator": "the analyses run on the CPU", "devices": "the analyses run on the CPU",
    "strategy": "the analyses run on the CPU", "progress": "the progress bar is always shown",
    "generation.num_beams": "the analyses decode greedily",
}


@dataclass
class AnalyzeArgs:
    """What ``analyze`` takes besides the evaluation keys."""

    analysis: str = MISSING
    """modality-attention | sparsity | layer-ppci | step-ppci | coverage | drift | all (the
    first bare word)."""
    out_dir: str = "runs/analysis"
    """Output directory: <analysis>.csv and <analysis>.png; `out=` is a deprecated spelling."""


def usage() -> str:
    return help_text(
        f"python -m avl_lab analyze {{{','.join(CHOICES)}}} [key=value ...]",
        "The paper's attention observations (Figs 1, 3, 4, 5) and two per-head ones (coverage, "
        "drift) on a model and task; writes a CSV and a PNG per analysis.",
        [Section("Analysis keys", AnalyzeArgs, skip=("analysis",)),
         Section("Evaluation keys (defaults: model=avl-tiny data=synth-docvqa data.limit=16 "
                 "batch_size=4 generation.max_new_tokens=20)", EvalConfig,
                 skip=(*[k for k in IGNORED if "." not in k], "out_dir"))],
        [f"{', '.join(DECODE)} compare decode steps: generation.max_new_tokens must be ≥ 2."],
    )


def configure(dotlist: list[str]) -> tuple[AnalyzeArgs, list[str], EvalConfig]:
    """``(analysis args, the analyses to run, the evaluation config)``; nothing is written."""
    from avl_lab.models import default_model

    own, rest = split_keys(dotlist, AnalyzeArgs, EvalConfig, IGNORED)
    opts: AnalyzeArgs = load_structured(AnalyzeArgs, own)
    if opts.analysis not in CHOICES:
        raise ConfigError(f"`analysis`: unknown analysis {opts.analysis!r}; choose one of "
                          f"{', '.join(CHOICES)}")
    names = list(ANALYSES) if opts.analysis == "all" else [opts.analysis]
    cfg = load_config([f"model={default_model()}", "data=synth-docvqa", "data.limit=16",
                       "batch_size=4", "generation.max_new_tokens=20", *rest])
    decode = [n for n in names if n in DECODE]
    if decode and cfg.generation.max_new_tokens < 2:
        raise ConfigError(f"`generation.max_new_tokens` must be ≥ 2 for {', '.join(decode)} (they "
                          f"compare decode steps; the first new token comes from the prefill), "
                          f"got {cfg.generation.max_new_tokens}")
    return opts, names, cfg


def _main(argv: list[str]) -> int:
    args = parse_argv(argv, positional=("analysis",))
    if args.help:
        print(usage())
        return 0
    from avl_lab.evaluation.preflight import check_model, check_out_dir
    from avl_lab.experiments.analysis.run import collect_for, tabulate

    opts, names, cfg = with_config_file(configure, args.dotlist)
    decode = [n for n in names if n in DECODE]
    out = Path(opts.out_dir)
    check_out_dir(out)
    check_model(cfg)
    if args.check:
        return checked("analyze")
    samples = collect_for(names, cfg)
    steps = [s.steps for n in decode for s in samples[n]]
    if decode and not any(steps):
        raise InputFileError(f"{', '.join(decode)}: every sample ended after its first token, so "
                             "there is no decode step to compare; use other data or another model")
    tables = {n: tabulate(n, samples[n], out) for n in names}
    for name, df in tables.items():
        if df.empty:
            print(f"== {name}: nothing to measure on this task (see the warning)")
            continue
        num = df.select_dtypes("number")
        keys = [c for c in ("signal", "step", "layer", "head", "S", "p", "modality") if c in df.columns]
        if "head" in keys:  # per-head tables: mean over steps
            keys = [k for k in keys if k != "step"]
        value = next(c for c in ("share", "fraction", "coverage", "ppci") if c in df.columns)
        print(f"== {name} ({out / name}.csv)")
        print(df.groupby(keys)[value].mean().round(4).to_string() if keys else num.mean())
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m avl_lab analyze``: 0 on success, 2 on bad input (one ``error:`` line)."""
    return run_verb(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
