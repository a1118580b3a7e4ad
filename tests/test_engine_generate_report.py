"""``benchmarks/_generate_report.py``: the issue-18 targets table flags exactly the misses."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _generate_report as report  # noqa: E402


def _row(x: float, kept: float = 1.0, expected: float = 1.0, cache: float = 1.0, stored: float = 1.0):
    return {"prefill_x": x, "prefill_cpu_x": x, "kept_work": kept, "expected_x": expected,
            "decode_x": 0.6, "decode_cpu_x": 0.6, "cache_x_full": cache, "stored": stored}  # fmt: skip


def _table(**over) -> dict:
    rows = {"stock": _row(1.0), "full": _row(1.02), "avl": _row(1.04, cache=0.48, stored=0.47),
            "avl P T": _row(1.2, kept=0.95, expected=0.96), "h2o": _row(1.29),
            "fastv": _row(0.80, kept=0.76, expected=0.78)}  # fmt: skip
    for name, row in over.items():
        rows[name.replace("_", " ")] = row
    return {"layout": "llava15", "batch": 1, "prompt_tokens": 604, "rows": rows}


def test_all_met():
    out = report.summary([_table()], [_table()])
    assert out.endswith("All targets met.") and "(miss)" not in out


def test_each_miss_is_flagged():
    tables = [
        _table(full=_row(1.06)),
        _table(avl_P_T=_row(1.31, kept=0.95, expected=0.96)),
        _table(fastv=_row(0.85, kept=0.76, expected=0.78)),  # saves less than its kept work
        _table(avl=_row(1.0, cache=0.52, stored=0.47)),  # cache 10% above its stored fraction
    ]
    slow = _table()
    slow["rows"]["avl"] = {**slow["rows"]["avl"], "decode_x": 0.75, "decode_cpu_x": 0.75}
    out = report.summary(tables, [slow])
    verdict = out.splitlines()[-1]
    for what in ("full prefill 1.06", "avl P T prefill 1.31", "fastv prefill 0.85",
                 "avl cache 0.520 vs 0.470", "7B llava15 B=1 avl decode 0.75"):  # fmt: skip
        assert what in verdict, (what, verdict)
    assert out.count("(miss)") == 5


def test_wall_clock_basis_reads_the_wall_ratios():
    t = _table()
    t["rows"]["h2o"] = {**t["rows"]["h2o"], "prefill_x": 1.4}  # CPU 1.29 (met), wall 1.4
    assert "(miss)" not in report.summary([t], [], cpu=True)
    assert "h2o prefill 1.40" in report.summary([t], [], cpu=False)


def test_decode_table_shows_the_linear_floor():
    t = _table()
    t["linear_floor"] = {"decode_x": 0.66, "decode_cpu_x": 0.71}
    out = report.summary([], [t])
    row = next(line for line in out.splitlines() if line.startswith("| llava15 | 1 | 604 | 0.71 |"))
    assert "0.60" in row  # avl's decode ratio beside the floor


def test_linear_floor_times_every_linear_layer_and_the_head(monkeypatch):
    import torch
    from _generate_probes import linear_floor

    from avl_lab.engine.families import family_of
    from avl_lab.models import tiny_random

    model, _ = tiny_random("llava", seed=0)
    text = family_of(model).text_model(model)
    seen: list[torch.Size] = []
    real = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: seen.append(x.shape) or real(self, x))
    wall, cpu = linear_floor(model, text, batch=3, rounds=2)
    n = sum(isinstance(m, torch.nn.Linear) for m in text.modules()) + 1  # + the LM head
    assert len(seen) == 3 * n and all(s[:2] == (3, 1) for s in seen)  # warm-up + 2 rounds
    assert wall > 0 and cpu >= 0
