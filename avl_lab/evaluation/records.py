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

from avl_lab.errors import InputFileError

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
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    break  # partial last line
                rec = self._parse(line, number)
                if rec["id"] not in seen:
                    seen.add(rec["id"])
                    out.append(rec)
        return out

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputFileError(
                f"{self.path} line {number} is not valid JSON ({err.msg}); delete that line to "
                "resume (its sample is then recomputed) or delete the file to start over"
            ) from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise InputFileError(f"{self.path} line {number} is not a sample record (no `id`); "
                                 "delete that line to resume")
        return rec

    def has_records(self) -> bool:
        """Whether the file holds at least one byte (complete or not)."""
        return self.path.exists() and self.path.stat().st_size > 0

    def ids(self) -> set[str]:
        return {r["id"] for r in self.read()}
