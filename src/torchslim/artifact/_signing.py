"""Signing an artifact folder with an elliptic-curve key (OpenSSF model-signing), verified offline.

The signature is a Sigstore bundle stored as ``model.sig`` inside the artifact folder. It covers every other file
of the folder: model-signing hashes each file (sha256) into a manifest and signs that; ``model.sig`` itself is the
one path left out (git files, which model-signing skips by default, are covered too). So a file changed, added or
removed after signing fails verification, including an edit that keeps the artifact internally valid
(``update_manifest`` re-seals ``model.safetensors``: sign last).

Keys are PEM files (NIST P-256, P-384 or P-521, the curves model-signing accepts); neither signing nor
verification touches the network: no transparency log, no certificate, no OIDC.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from torchslim.artifact._atomic import write_bytes_atomic
from torchslim.artifact._format import MANIFEST
from torchslim.artifact._trust import SIGNATURE, ArtifactError

_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_LIMIT = 300  # characters of one error line


def _error(path: str | Path, message: str) -> ArtifactError:
    """An ArtifactError whose one line (``<path>: <message>``) stays under _LIMIT characters."""
    room = max(80, _LIMIT - len(str(path)) - 2)
    message = " ".join(message.split())
    return ArtifactError(path, message if len(message) <= room else message[:room - 1] + "…")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hashing_config() -> Any:
    """The same hashing for signing and verifying: sha256 of every file but model.sig."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def _load_key(path: str | Path, *, private: bool) -> Path:
    """``path`` once it holds an unencrypted PEM elliptic-curve key of the right kind; else an ArtifactError
    naming the key file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_path, kind = Path(path), "private" if private else "public"
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        raise _error(key_path, "key file does not exist") from None
    except OSError as exc:
        raise _error(key_path, f"key file cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except TypeError:  # cryptography's word for an encrypted key read without a password
        raise _error(key_path, "the private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        other = b"PUBLIC KEY" if private else b"PRIVATE KEY"
        hint = (f" (it holds a {'public' if private else 'private'} key; "
                f"{'sign' if private else 'verify'} takes the {kind} one)" if other in data else "")
        raise _error(key_path, f"not a PEM {kind} key{hint}") from None
    curve = getattr(getattr(key, "curve", None), "name", None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or curve not in _CURVES:
        raise _error(key_path, f"not an elliptic-curve key on {', '.join(_CURVES)} "
                               f"(got {curve or type(key).__name__.lstrip('_')})")
    return key_path


def check_signing_key(private_key: str | Path) -> None:
    """Raise :class:`ArtifactError` (naming the file) unless ``private_key`` is a PEM EC private key that
    :func:`sign_artifact` can sign with; a command checks this before it spends time on a run."""
    _load_key(private_key, private=True)


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise _error(folder, "no such artifact folder")
    return folder


def sign_artifact(path: str | Path, private_key: str | Path) -> Path:
    """Sign the artifact folder ``path`` with an elliptic-curve private key; writes ``path/model.sig``.

    An earlier signature is replaced; the new one is written atomically (a reader sees the old or the new one).

    Args:
        path: the artifact folder (as written by ``save_artifact``).
        private_key: an unencrypted PEM EC private key, e.g. from
            ``openssl ecparam -genkey -name prime256v1 -noout -out private.pem``.
    Returns:
        the path of the signature, ``path/model.sig``.
    """
    folder = _folder(path)
    if not (folder / MANIFEST).is_file():
        raise _error(folder, f"not a torchslim artifact (no {MANIFEST})")
    key = _load_key(private_key, private=True)
    from model_signing import signing

    for stale in folder.glob(f".{SIGNATURE}.*.tmp"):  # left by a signing that was killed while writing
        stale.unlink(missing_ok=True)
    config = signing.Config().set_hashing_config(_hashing_config()).use_elliptic_key_signer(private_key=key)
    with tempfile.TemporaryDirectory() as tmp:  # model-signing writes in place; the folder gets it atomically
        bundle = Path(tmp) / SIGNATURE
        try:
            config.sign(folder, bundle)
        except Exception as exc:  # noqa: BLE001  (hashing: symlinks, unreadable files; the signer's own kinds)
            raise _error(folder, f"cannot sign: {_one_line(exc)}") from None
        data = bundle.read_bytes()
    return write_bytes_atomic(folder / SIGNATURE, data)


def verify_artifact(path: str | Path, public_key: str | Path) -> None:
    """Check, offline, that the artifact folder ``path`` is exactly what the holder of ``public_key``'s private
    key signed. Any failure is an :class:`ArtifactError` with a one-line reason.

    Args:
        path: the artifact folder, holding ``model.sig``.
        public_key: the PEM EC public key, e.g. from ``openssl ec -in private.pem -pubout -out public.pem``.
    """
    folder = _folder(path)
    signature = folder / SIGNATURE
    if not signature.is_file():
        raise _error(folder, f"is not signed (no {SIGNATURE})")
    key = _load_key(public_key, private=False)
    try:
        bundle = json.loads(signature.read_bytes())
    except (ValueError, OSError):
        bundle = None
    if not isinstance(bundle, dict):
        raise _error(folder, f"{SIGNATURE} is not a signature bundle (not a JSON object)")
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(_hashing_config()).use_elliptic_key_verifier(public_key=key)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning on bundles of older versions
            config.verify(folder, signature)
    except InvalidSignature:
        raise _error(folder, f"{SIGNATURE} does not match the key in {key} (signed by a different key, "
                             f"or the signature was altered)") from None
    except Exception as exc:  # noqa: BLE001  (model-signing raises ValueError for most, other kinds on bad bundles)
        text = str(exc)
        if text.startswith("Key mismatch"):
            raise _error(folder, f"{SIGNATURE} was made by a different key than the one in {key}") from None
        if text.startswith("Signature mismatch"):
            raise _error(folder, f"files changed after signing: {_differences(text)}") from None
        raise _error(folder, f"cannot verify {SIGNATURE}: {_one_line(exc)}") from None


def _differences(text: str) -> str:
    """'model.safetensors modified, notes.txt added' from model-signing's "Signature mismatch: [...]" text: the
    repr of a list of sentences, one naming the extra files, one the missing files, one per file whose hash
    differs."""
    try:
        sentences = ast.literal_eval(text.partition(":")[2].strip())
    except (ValueError, SyntaxError):
        sentences = None
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        return " ".join(text.split())
    openings = {"Hash mismatch for '": "modified", "Extra files found in model '": "added",
                "Missing files in model '": "removed"}
    parts = []
    for sentence in sentences:
        for opening, what in openings.items():
            if not sentence.startswith(opening):
                continue
            rest = sentence[len(opening):]
            if what == "modified":  # "<file>': Expected '<digest>', Actual '<digest>'"
                names = [rest.partition("': Expected")[0]]
            else:  # "<model name>': <file>, <file>"
                names = rest.partition("': ")[2].split(", ")
            parts += [f"{name} {what}" for name in names]
    return ", ".join(parts) if parts else " ".join(text.split())
