"""Atomic writes: a reader (or a process killed midway) sees the old file or folder, or the new one, never a mix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file: a reader sees the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write_file(tmp, data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync ``path`` (mode 0666 less the umask, like any file the user writes)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_dir(target: Path) -> Path:
    """A new empty sibling folder of ``target`` (mode 0777 less the umask), after clearing the leftovers of
    writes that were killed midway."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        pid = stale.name[len(target.name) + 2:].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    for n in range(1000):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{n}.tmp")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder beside {target}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (its leftovers are not stale while it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``. A crash leaves the old folder, the new one, or (between the two renames)
    none, never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    fsync_dir(target.parent)


def remove(path: Path) -> None:
    """Remove a file or a folder, whichever ``path`` is (nothing when it does not exist)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish(staging: Path, out: Path, names: list[str], *, commit: str, outputs: tuple[str, ...]) -> None:
    """Move the files and folders ``names`` of ``staging`` into ``out``, with ``commit`` (one of them) last.

    ``commit`` is the record that says the others belong together (a run's ``metrics.json``): it is removed
    before anything else changes and put back after everything else is in place, so at every moment a folder that
    holds ``commit`` holds exactly the outputs it describes. Earlier outputs (``outputs``) that the new set lacks
    are removed too, so nothing of an earlier run is left beside the new record.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / commit).unlink(missing_ok=True)
    fsync_dir(out)
    for name in outputs:
        if name not in names:
            remove(out / name)
    for name in names:
        if name == commit:
            continue
        if (staging / name).is_dir():
            replace_dir(staging / name, out / name)
        else:
            os.replace(staging / name, out / name)
    fsync_dir(out)
    os.replace(staging / commit, out / commit)
    fsync_dir(out)
    shutil.rmtree(staging, ignore_errors=True)
