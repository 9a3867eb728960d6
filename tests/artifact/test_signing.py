"""Signing artifacts with an EC key (model-signing), verified offline: what passes, and the one line each failure
gives."""

import json
import socket

import pytest
import torch
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from torch import nn

from cli_support import DIGITS_DOMAIN
from torchslim.artifact import (SIGNATURE, ArtifactError, read_manifest, save_artifact, sign_artifact,
                                update_manifest, verify_artifact)
from torchslim.cli import cli as torchslim_cli

ARCH = {"name": "linear", "kwargs": {}}
RECIPE = "domain: domain.yaml\nseed: 0\nstages:\n  - train: {epochs: 1, lr: 0.003, batch_size: 64}\n"


def make_keys(folder, name="signer", curve=ec.SECP256R1()):
    """(private.pem, public.pem) of a fresh EC key pair in ``folder``."""
    key = ec.generate_private_key(curve)
    private, public = folder / f"{name}.private.pem", folder / f"{name}.public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def artifact(tmp_path):
    torch.manual_seed(0)
    return save_artifact(nn.Linear(8, 4), tmp_path / "artifact", architecture=ARCH, extra={"metrics": {"value": 0.5}})


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path)


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt or name lookup fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("signing tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def failure(call, *args):
    """The one-line message of the ArtifactError ``call(*args)`` raises."""
    with pytest.raises(ArtifactError) as info:
        call(*args)
    text = str(info.value)
    assert "\n" not in text and len(text) <= 300, text
    return text


def test_sign_then_verify_offline_covers_every_file_but_the_signature(artifact, keys, offline):
    private, public = keys
    assert sign_artifact(artifact, private) == artifact / SIGNATURE
    verify_artifact(artifact, public)
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.safetensors", SIGNATURE]
    bundle = json.loads((artifact / SIGNATURE).read_text())
    assert bundle["verificationMaterial"]["tlogEntries"] == []  # nothing was sent to a transparency log
    # signing again replaces the signature atomically: no temporary file is left behind
    sign_artifact(artifact, private)
    verify_artifact(artifact, public)
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.safetensors", SIGNATURE]


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_larger_curves_sign_and_verify(artifact, tmp_path, curve):
    private, public = make_keys(tmp_path, "big", curve)
    sign_artifact(artifact, private)
    verify_artifact(artifact, public)


def test_a_byte_changed_after_signing_fails(artifact, keys):
    private, public = keys
    sign_artifact(artifact, private)
    data = bytearray((artifact / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (artifact / "model.safetensors").write_bytes(bytes(data))
    assert failure(verify_artifact, artifact, public) == \
        f"{artifact}: files changed after signing: model.safetensors modified"


def test_an_edited_and_resealed_artifact_fails_though_it_still_loads(artifact, keys):
    private, public = keys
    sign_artifact(artifact, private)
    update_manifest(artifact, metrics={"value": 0.99})  # a consistent artifact with a better-looking metric
    assert read_manifest(artifact)["metrics"] == {"value": 0.99}  # its own integrity checks pass
    assert failure(verify_artifact, artifact, public) == \
        f"{artifact}: files changed after signing: model.safetensors modified"


def test_files_added_or_removed_after_signing_fail(artifact, keys):
    private, public = keys
    sign_artifact(artifact, private)
    (artifact / ".gitignore").write_text("*\n")  # model-signing skips git files unless told not to
    message = failure(verify_artifact, artifact, public)
    assert message == f"{artifact}: files changed after signing: .gitignore added"
    (artifact / ".gitignore").unlink()
    (artifact / "manifest.json").unlink()
    assert failure(verify_artifact, artifact, public) == \
        f"{artifact}: files changed after signing: manifest.json removed"


def test_a_different_key_pair_fails(artifact, keys, tmp_path):
    private, _ = keys
    _, other_public = make_keys(tmp_path, "other")
    sign_artifact(artifact, private)
    assert failure(verify_artifact, artifact, other_public) == \
        f"{artifact}: {SIGNATURE} was made by a different key than the one in {other_public}"


def test_a_signature_moved_from_another_artifact_fails(artifact, keys, tmp_path):
    private, public = keys
    torch.manual_seed(1)
    other = save_artifact(nn.Linear(8, 4), tmp_path / "other", architecture=ARCH)
    sign_artifact(other, private)
    (artifact / SIGNATURE).write_bytes((other / SIGNATURE).read_bytes())
    message = failure(verify_artifact, artifact, public)
    assert message.startswith(f"{artifact}: files changed after signing: ") and "model.safetensors modified" in message


def test_a_forged_signature_fails(artifact, keys):
    """The payload (the list of file digests) swapped for another, the key hint kept: the ECDSA check refuses."""
    import base64

    private, public = keys
    sign_artifact(artifact, private)
    bundle = json.loads((artifact / SIGNATURE).read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"] = payload["predicate"]["resources"][:1]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (artifact / SIGNATURE).write_text(json.dumps(bundle))
    assert failure(verify_artifact, artifact, public) == (
        f"{artifact}: {SIGNATURE} does not match the key in {public} (signed by a different key, or the signature "
        f"was altered)")


def test_unsigned_and_damaged_signatures_fail(artifact, keys):
    _, public = keys
    assert failure(verify_artifact, artifact, public) == f"{artifact}: is not signed (no {SIGNATURE})"
    (artifact / SIGNATURE).write_text("not json")
    assert failure(verify_artifact, artifact, public) == \
        f"{artifact}: {SIGNATURE} is not a signature bundle (not a JSON object)"
    (artifact / SIGNATURE).write_text("{}")
    assert failure(verify_artifact, artifact, public).startswith(f"{artifact}: cannot verify {SIGNATURE}: ")


def test_bad_key_files_fail_naming_the_file(artifact, keys, tmp_path):
    private, public = keys
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    assert failure(sign_artifact, artifact, tmp_path / "absent.pem") == \
        f"{tmp_path / 'absent.pem'}: key file does not exist"
    assert failure(sign_artifact, artifact, junk) == \
        f"{junk}: not a PEM private key (it holds a public key; sign takes the private one)"
    assert failure(sign_artifact, artifact, public) == \
        f"{public}: not a PEM private key (it holds a public key; sign takes the private one)"
    sign_artifact(artifact, private)
    assert failure(verify_artifact, artifact, junk) == f"{junk}: not a PEM public key"
    assert failure(verify_artifact, artifact, private) == \
        f"{private}: not a PEM public key (it holds a private key; verify takes the public one)"
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert failure(sign_artifact, artifact, rsa_key) == \
        f"{rsa_key}: not an elliptic-curve key on secp256r1, secp384r1, secp521r1 (got RSAPrivateKey)"
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    assert failure(sign_artifact, artifact, encrypted) == \
        f"{encrypted}: the private key is encrypted; give an unencrypted PEM key"
    verify_artifact(artifact, public)  # none of the failed attempts touched the signature


def test_only_artifact_folders_are_signed(tmp_path, keys):
    private, _ = keys
    assert failure(sign_artifact, tmp_path / "nowhere", private) == f"{tmp_path / 'nowhere'}: no such artifact folder"
    (tmp_path / "plain").mkdir()
    assert failure(sign_artifact, tmp_path / "plain", private) == \
        f"{tmp_path / 'plain'}: not a torchslim artifact (no manifest.json)"


def test_cli_sign_and_verify(artifact, keys, tmp_path):
    private, public = keys
    _, other_public = make_keys(tmp_path, "other")
    runner = CliRunner()
    signed = runner.invoke(torchslim_cli, ["sign", str(artifact), "--key", str(private)])
    assert (signed.exit_code, signed.stdout) == (0, f"signed {artifact} ({SIGNATURE})\n")
    verified = runner.invoke(torchslim_cli, ["verify", str(artifact), "--key", str(public)])
    assert (verified.exit_code, verified.stdout) == (0, f"verified {artifact}: signed by the key in {public}\n")
    wrong = runner.invoke(torchslim_cli, ["verify", str(artifact), "--key", str(other_public)])
    assert wrong.exit_code == 2 and wrong.stdout == ""
    assert wrong.stderr == f"error: {artifact}: {SIGNATURE} was made by a different key than the one in " \
                           f"{other_public}\n"
    update_manifest(artifact, metrics={"value": 0.99})
    changed = runner.invoke(torchslim_cli, ["verify", str(artifact), "--key", str(public)])
    assert changed.exit_code == 2
    assert changed.stderr == f"error: {artifact}: files changed after signing: model.safetensors modified\n"
    missing = runner.invoke(torchslim_cli, ["sign", str(artifact), "--key", str(tmp_path / "absent.pem")])
    assert missing.exit_code == 2 and missing.stderr == f"error: {tmp_path / 'absent.pem'}: key file does not exist\n"


def test_cli_verify_of_an_unsigned_artifact_is_one_line_exit_2(artifact, keys, cli):
    _, public = keys
    proc = cli("verify", artifact, "--key", public)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {artifact}: is not signed (no {SIGNATURE})\n"


def test_run_with_a_missing_sign_key_fails_before_training(tmp_path, cli):
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = cli("run", "recipe.yaml", "--out", "out", "--sign-key", "absent.pem", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == "error: absent.pem: --sign-key: key file does not exist\n"
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    assert cli("check", "recipe.yaml", cwd=tmp_path).returncode == 0  # the recipe itself would have run


@pytest.mark.slow
def test_run_with_a_sign_key_signs_the_artifact(tmp_path, cli, keys):
    private, public = keys
    (tmp_path / "domain.yaml").write_text(DIGITS_DOMAIN)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = cli("run", "recipe.yaml", "--out", "out", "--threads", "1", "--sign-key", private, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith(f"signed out/artifact ({SIGNATURE})")
    verify_artifact(tmp_path / "out" / "artifact", public)
