"""``torchslim auto`` on a real PostgreSQL server: a throw-away cluster on a local port, removed afterwards.
Two searches with their own output folders share one study through it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from search.test_auto_cli import DOMAIN, FAST, _auto

HAVE_SERVER = shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None
HAVE_DRIVER = importlib.util.find_spec("psycopg") is not None  # SQLAlchemy's driver for postgresql://
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _as_db_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: run the server as the postgres account then
    return ["runuser", "-u", "postgres", "--", *cmd] if AS_ROOT else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    folder = Path(tempfile.mkdtemp(prefix="torchslim-pg-"))
    folder.chmod(0o755)
    if AS_ROOT:
        shutil.chown(folder, "postgres")
    port, data = _free_port(), folder / "data"
    subprocess.run(_as_db_user(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(_as_db_user(["pg_ctl", "-D", str(data), "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                                "-w", "-l", str(folder / "log"), "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_db_user(["pg_ctl", "-D", str(data), "-w", "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_SERVER and HAVE_DRIVER), reason="needs PostgreSQL (initdb, pg_ctl) and psycopg")
def test_two_searches_share_a_study_through_postgresql(tmp_path, postgres_url):
    import optuna

    (tmp_path / "domain.yaml").write_text(DOMAIN)
    first = _auto("domain.yaml", "--out", "a", "--storage", postgres_url, "--trials", "1", *FAST, cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    second = _auto("domain.yaml", "--out", "b", "--storage", postgres_url, "--trials", "2", *FAST, cwd=tmp_path)
    assert second.returncode == 3, second.stderr
    # the second search found the first's candidate in the study and ran one more
    assert [line.split(":")[0] for line in second.stderr.splitlines() if line.startswith("trial ")] == ["trial 1"]
    study = optuna.load_study(study_name="auto-digits-auto", storage=postgres_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (tmp_path / "a" / "best").is_dir() and (tmp_path / "b" / "best").is_dir()
    assert not (tmp_path / "a" / "study.db").exists()
