"""``samples.jsonl``: one line per sample, appended, flushed and synced as it is computed.

Several processes (DDP ranks) append to the same file under an exclusive ``flock``; a line
cut short by a crash is dropped when the file is reopened, so re-running resumes cleanly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RecordLog:
    """An append-only JSON-lines file of records keyed by ``id``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def repair(self) -> None:
        """Drop a trailing partial line (a crash mid-write) so appends stay well-formed."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning("%s: dropping a partial last line (%d bytes)", self.path, len(data) - cut)
                f.truncate(cut)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All complete records, the first one of each ``id``, in file order."""
        if not self.path.exists():
            return []
        out, seen = [], set()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # partial last line
                rec = json.loads(line)
                if rec["id"] not in seen:
                    seen.add(rec["id"])
                    out.append(rec)
        return out

    def ids(self) -> set[str]:
        return {r["id"] for r in self.read()}
