"""``benchmarks/decode_parts.py``: the per-part timing of a decode step runs and times every part."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_parts_times_every_part_of_every_variant():
    proc = subprocess.run(
        [sys.executable, "benchmarks/decode_parts.py", "--tiny", "--rows", "160", "--rounds", "1",
         "--steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "step 1" not in line}
    assert set(rows) == {"full", "sc", "sck", "sct", "avl"}
    for name, cells in rows.items():
        steps, (op, decode, update, compact, rest) = cells[:3], map(float, cells[3:])
        assert all(float(c) > 0 for c in steps), name
        assert 0 < op < decode and update > 0 and rest > 0 and compact >= 0, name  # op in _decode
