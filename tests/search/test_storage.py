"""Opening a study's storage: processes that open one new database at the same moment all get it."""

from __future__ import annotations

import multiprocessing

import pytest

from torchslim._errors import ConfigError
from torchslim.search.storage import open_storage

pytest.importorskip("optuna")


def _open(urls: list[str], barrier, errors) -> None:
    """Open each new database the moment every worker is ready to (one race per url)."""
    for url in urls:
        barrier.wait()
        try:
            open_storage(url)
        except Exception as exc:  # noqa: BLE001  (the test reports whatever it was)
            errors.put(str(exc))


def test_processes_opening_one_new_sqlite_file_at_once_all_get_it(tmp_path):
    """Each creates the tables it finds missing; the losers of that race (``table studies already exists``,
    ``UNIQUE constraint failed: alembic_version``: 8 failures in 10 rounds of 4 processes without the retry)
    open the database the winner made."""
    context = multiprocessing.get_context("spawn")
    errors, barrier = context.Queue(), context.Barrier(4)
    urls = [f"sqlite:///{tmp_path / f'study{round_}.db'}" for round_ in range(3)]
    workers = [context.Process(target=_open, args=(urls, barrier, errors)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert all((tmp_path / f"study{round_}.db").is_file() for round_ in range(3))
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found


def test_other_errors_are_not_retried(tmp_path, monkeypatch):
    import optuna

    calls = []

    def broken(url, engine_kwargs=None):
        calls.append(url)
        raise RuntimeError("unable to open database file")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="--storage: cannot open sqlite:///x.db: unable to open database file"):
        open_storage("sqlite:///x.db")
    assert len(calls) == 1
