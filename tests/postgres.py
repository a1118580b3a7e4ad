"""A throw-away PostgreSQL server on a loopback port, run as an unprivileged user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: drop to ``nobody`` when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "nobody", "--", *cmd]
    return cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a temp dir; yield its URL; stop and remove it afterwards."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL's initdb/pg_ctl are not installed")
    root = tempfile.mkdtemp(prefix="avl-pg-")
    os.chmod(root, 0o777)
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.mkdir(sock)
    os.chmod(sock, 0o777)
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(_as_user([initdb, "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
                   check=True, capture_output=True, cwd=root, env=env)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=50"
    subprocess.run(_as_user([pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w",
                             "start"]), check=True, capture_output=True, cwd=root, env=env)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"  # as the README writes it
    finally:
        subprocess.run(_as_user([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]),
                       capture_output=True, cwd=root, env=env)
        shutil.rmtree(root, ignore_errors=True)
