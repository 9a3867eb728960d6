"""Where an ``auto`` study lives: an Optuna RDB storage (SQLite in the output folder by default, or any
RDB URL that several processes and machines share)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from torchslim._errors import ConfigError

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "STORAGE_SCHEMES", "check_storage_url", "default_storage", "open_storage"]

# Optuna's RDB back-ends (SQLAlchemy dialects); ``postgresql+psycopg2://`` and the like name a driver too.
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
_SCHEMA_ATTEMPTS = 5
# What a database says when another process created its tables (or recorded their version) at the same moment:
# SQLite and PostgreSQL wordings.
_CREATED_MEANWHILE = ("already exists", "UNIQUE constraint failed", "duplicate key value")


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def check_storage_url(url: str) -> None:
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in STORAGE_SCHEMES:
        raise ConfigError("--storage", f"unknown storage {url!r}; use an Optuna RDB URL: "
                                       f"{', '.join(s + '://…' for s in STORAGE_SCHEMES)}")


# A process that stops without a word (its machine lost, killed on another host) leaves its candidate running in
# the study. Each process records a heartbeat for the candidate it runs; the next process to start a candidate
# fails one whose heartbeat is older than STALE_AFTER_S, and ``on_stale`` gets it (to run it again).
HEARTBEAT_S = 60
STALE_AFTER_S = 600


def open_storage(url: str, on_stale: Optional[Callable[[Any, Any], None]] = None, *,
                 heartbeat: tuple[int, int] = (HEARTBEAT_S, STALE_AFTER_S)) -> Any:
    """An Optuna RDB storage; a database that cannot be reached is a ConfigError naming ``--storage``.

    Args:
        on_stale: ``(study, failed_trial)``, called for each candidate failed for its stale heartbeat; None: no
            heartbeats.
        heartbeat: seconds between a running candidate's heartbeats, and of silence after which it is stale.
    """
    import inspect

    import optuna

    check_storage_url(url)
    # SQLite: several processes share the file; a writer waits for the lock instead of failing at once.
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    beats: dict[str, Any] = {}
    if on_stale is not None:
        # the newer name of failed_trial_callback, where Optuna has it
        names = inspect.signature(optuna.storages.RDBStorage).parameters
        callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names \
            else "failed_trial_callback"
        beats = {"heartbeat_interval": heartbeat[0], "grace_period": heartbeat[1], callback: on_stale}
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9, and said so
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)
        except Exception as exc:  # driver missing, host unreachable, bad credentials, unwritable file
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            attempt += 1
            if not any(m in message for m in _CREATED_MEANWHILE) or attempt == _SCHEMA_ATTEMPTS:
                raise ConfigError("--storage", f"cannot open {url}: {message}") from None
            # Two processes opened a new database at once and both created its tables: the other one's are
            # there now, and opening it again finds them.
            time.sleep(0.1 * attempt)
