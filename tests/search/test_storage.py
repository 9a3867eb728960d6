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


def test_a_candidate_whose_process_went_silent_runs_again_once(tmp_path):
    """A process lost on another machine leaves its candidate running in the study: with heartbeats, the next
    process to start a candidate fails it (Optuna's fail_stale_trials) and the search enqueues it again, once."""
    import time

    import optuna

    from torchslim.domain import load_domain
    from torchslim.search import AutoSearch
    from torchslim.search.storage import HEARTBEAT_S, STALE_AFTER_S

    said: list[str] = []
    domain = load_domain({"name": "d", "task": "image-classification", "data": {"source": "digits"},
                          "model": {"name": "lenet300_100"}, "constraints": {"max_size_bytes": 5000}})
    search = AutoSearch(domain, tmp_path / "out", log=said.append)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert open_storage(url).heartbeat_interval is None  # heartbeats only where a search asks for them
    beating = open_storage(url, search._rerun_stale)
    assert (beating.heartbeat_interval, beating.grace_period) == (HEARTBEAT_S, STALE_AFTER_S)
    storage = open_storage(url, search._rerun_stale, heartbeat=(1, 1))
    study = optuna.create_study(storage=storage, study_name="s")
    lost = study.ask()
    x = lost.suggest_float("x", 0.0, 1.0)
    lost.set_user_attr("host", "elsewhere")
    storage.record_heartbeat(lost._trial_id)
    time.sleep(2.5)  # silent for longer than the grace period
    optuna.storages.fail_stale_trials(study)
    first, waiting = study.get_trials(deepcopy=False)
    assert first.state.name == "FAIL" and waiting.state.name == "WAITING"
    assert said == ["trial 0: interrupted (no heartbeat from its process on elsewhere); its candidate runs again"]
    search._rerun_stale(study, first)  # a second process failing it too: still one rerun
    assert len(study.get_trials(deepcopy=False)) == 2 and len(said) == 1
    rerun = study.ask()  # the next candidate asked for is the lost one
    assert rerun.suggest_float("x", 0.0, 1.0) == x and rerun.user_attrs == {"rerun_of": 0}
