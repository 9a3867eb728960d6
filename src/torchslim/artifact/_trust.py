"""What opening an artifact may do: which files it may read, and whether it may import code.

Artifacts come from strangers. Every command that opens one (``load``, ``eval``, ``inspect``, ``export``, a
distillation teacher) asks these questions here, so the answers are the same everywhere:

- a file is read only when the format or the manifest names it, by a plain name inside the folder (no
  separators, no ``..``, no links), and a folder holding anything else is refused;
- a model built by a user factory (``module:function``) imports code, so it is built only when the user said
  ``trust_code=True`` (``--trust-code``); built-in architectures never import anything;
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torchslim._errors import ConfigError

SIGNATURE = "model.sig"  # the signature bundle (``torchslim sign``): read only when verifying
_MAX_NAME = 255


class ArtifactError(ConfigError):
    """An artifact that cannot be trusted or read."""

    def __init__(self, path: str | Path, message: str):
        super().__init__("", message, str(path))


def is_plain_name(name: Any) -> bool:
    """A file name that can only mean a file directly inside the folder."""
    return (isinstance(name, str) and 0 < len(name) <= _MAX_NAME and name not in (".", "..")
            and not any(c in name for c in "/\\\0") and not name.startswith("."))


def check_files(folder: Path, named: Iterable[str]) -> None:
    """Refuse a folder that holds anything but the regular files ``named`` (and a signature), or lacks one."""
    named = set(named)
    try:
        entries = {e.name: e for e in os.scandir(folder)}
    except OSError as exc:
        raise ArtifactError(folder, f"cannot list the artifact folder ({exc.strerror or type(exc).__name__})"
                            ) from None
    for name in sorted(entries):
        entry = entries[name]
        if name not in named and name != SIGNATURE:
            raise ArtifactError(folder, f"holds {name!r}, which its manifest does not name (refused: an artifact "
                                        f"holds only the files it records)")
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise ArtifactError(folder, f"{name} is not a regular file (links and folders are refused)")
    for name in sorted(named - set(entries)):
        raise ArtifactError(folder, f"{name} is missing")


def read_file(folder: Path, name: str) -> bytes:
    """The bytes of the file ``name`` directly inside ``folder`` (a plain name; links refused)."""
    if not is_plain_name(name):
        raise ArtifactError(folder, f"names the file {str(name)[:80]!r}, which is not a plain file name inside "
                                    f"the artifact folder (refused)")
    path = folder / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(folder, f"{name} is missing") from None
    except OSError as exc:
        raise ArtifactError(folder, f"cannot read {name} ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(folder, f"{name} is not a regular file (links and folders are refused)")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(folder, f"cannot read {name} ({exc.strerror or type(exc).__name__})") from None


def require_code_consent(folder: Path, architecture: dict[str, Any], trust_code: bool) -> None:
    """Refuse to build a factory model (it imports and runs the named function) unless the user trusts it."""
    factory = architecture.get("factory")
    if factory is None or trust_code:
        return
    raise ArtifactError(folder, f"its model is built by importing and calling {str(factory)[:100]!r} (user code); "
                                f"refused: pass --trust-code (trust_code=True) if you trust where it came from")
