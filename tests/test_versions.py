"""The declared transformers range is the tested one, and a version outside it is one clear
error at import."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from avl_lab import _versions

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_checked_range():
    text = (ROOT / "pyproject.toml").read_text()
    (declared,) = re.findall(r'"transformers([^"]+)"', text)
    assert declared == _versions.TRANSFORMERS


def test_the_installed_transformers_is_in_range_and_pinned():
    assert _versions.problem() is None
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["transformers"] == version("transformers")


def test_a_version_outside_the_range_is_one_line_naming_it():
    for found in ("5.2.0", "5.26.0", "6.0.0"):
        msg = _versions.problem(found)
        assert msg is not None and "\n" not in msg
        assert f"transformers{_versions.TRANSFORMERS}" in msg and found in msg
    assert _versions.problem("5.25.0") is None


def test_import_refuses_an_unsupported_transformers(tmp_path):
    # a fake distribution metadata for transformers 5.2.0 ahead of the real one on sys.path
    dist = tmp_path / "transformers-5.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.2.0\n")
    res = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import avl_lab"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: avl_lab is tested with transformers") and "5.2.0" in last
