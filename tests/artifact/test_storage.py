"""Deep Compression storage: bytes against the fp32 artifact, exact reloads, integrity, permissions."""

import json
import os
import stat

import pytest
import torch
from click.testing import CliRunner

from artifact_support import rewrite_manifest
from torchslim.artifact import (ArtifactError, describe_artifact, load_artifact, load_state, read_manifest,
                                save_artifact, update_manifest)
from torchslim.cli import cli
from torchslim.evaluate import size_bytes
from torchslim.models import LeNet300100
from torchslim.prune import MagnitudeConfig, prune_
from torchslim.quantize import KMeansConfig, quantize_

ARCH = {"name": "lenet300_100", "kwargs": {}}
X = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))


def _lenet(sparsity=None, bits=None):
    torch.manual_seed(0)
    model = LeNet300100().eval()
    if sparsity is not None:
        prune_(model, MagnitudeConfig(sparsity=sparsity))
    if bits is not None:
        quantize_(model, KMeansConfig(bits=bits))
    return model


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_95_sparse_4bit_kmeans_lenet_is_about_40x_smaller(tmp_path):
    """LeNet-300-100 (50,610 params): 95% of each layer's weights pruned, 4-bit k-means codebook."""
    baseline = save_artifact(_lenet(), tmp_path / "fp32", architecture=ARCH)
    model = _lenet(0.95, 4)
    path = save_artifact(model, tmp_path / "dc", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    loaded, manifest = load_artifact(path)
    assert torch.equal(loaded(X), model(X))

    fp32, compressed = size_bytes(baseline), size_bytes(path)
    assert 202_440 < fp32 * 1.2 and fp32 < 202_440  # fp32 weights, entropy-coded: still ~170 KB
    # measured 4,414: weights 2,506 nonzero -> ~2.8 KB, biases 1.4 KB, manifest < 0.4 KB (its tensor names and
    # shapes are this model's: the dictionary holds only the format's vocabulary)
    assert compressed < 4_500
    assert fp32 / compressed > 38 and 50_610 * 4 / compressed > 45
    tensors = manifest["tensors"]
    assert {tensors[f"fc{i}.weight_source.packed"]["encoding"] for i in (1, 2, 3)} == {"sparse4"}
    assert {tensors[f"fc{i}.bias"]["encoding"] for i in (1, 2, 3)} == {"dense"}  # exact fp32
    info = describe_artifact(path)["totals"]
    assert info["bytes"]["total"] == compressed and info["bytes"]["manifest"] < 400
    assert (info["params"], info["nonzero"]) == (50_610, 410 + 960 + 1500 + 50)


def test_pruned_float_weights_are_stored_sparse_and_reload_exactly(tmp_path):
    model = _lenet(0.9)
    path = save_artifact(model, tmp_path / "a", architecture=ARCH)
    loaded, manifest = load_artifact(path)
    assert torch.equal(loaded(X), model(X))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert manifest["tensors"]["fc2.weight"]["encoding"] == "sparse"
    # 5,020 nonzero fp32 weights (20 KB) + gaps + biases, against 202 KB dense
    assert size_bytes(path) < 0.13 * 202_440


def test_same_model_gives_the_same_bytes(tmp_path):
    model = _lenet(0.95, 4)
    a = save_artifact(model, tmp_path / "a", architecture=ARCH)
    b = save_artifact(model, tmp_path / "b", architecture=ARCH)
    c = save_artifact(load_artifact(a)[0], tmp_path / "c", architecture=ARCH)
    save_artifact(model, a, architecture=ARCH)  # over an existing artifact
    assert _files(a) == _files(b) == _files(c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_permissions_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    old = os.umask(umask)
    try:
        path = save_artifact(_lenet(), tmp_path / "a", architecture=ARCH)
        update_manifest(path, metrics={"metric": "accuracy", "value": 0.5})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder_mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {file_mode}


def test_update_manifest_keeps_the_tensors(tmp_path):
    path = save_artifact(_lenet(0.9, 4), tmp_path / "a", architecture=ARCH)
    state = load_state(path)
    updated = update_manifest(path, metrics={"metric": "accuracy", "value": 0.875})
    assert read_manifest(path) == updated and updated["metrics"]["value"] == 0.875
    assert all(torch.equal(state[k], v) for k, v in load_state(path).items())


def _expect_refused(path, match=None):
    with pytest.raises(ArtifactError, match=match) as err:
        load_artifact(path)
    assert "\n" not in str(err.value)


def test_every_single_bit_flip_is_refused(tmp_path):
    path = save_artifact(_lenet(0.9, 4), tmp_path / "a", architecture=ARCH, extra={"labels": list("0123456789")})
    for name in ("manifest.json", "model.safetensors"):
        original = (path / name).read_bytes()
        for i in range(len(original)):
            damaged = bytearray(original)
            damaged[i] ^= 1 << (i % 8)
            (path / name).write_bytes(bytes(damaged))
            with pytest.raises(ArtifactError) as err:
                read_manifest(path)
            assert "\n" not in str(err.value), (name, i)
        (path / name).write_bytes(original)
    load_artifact(path)


def test_truncated_missing_and_foreign_artifacts_are_refused(tmp_path):
    path = save_artifact(_lenet(0.9, 4), tmp_path / "a", architecture=ARCH)
    original = (path / "model.safetensors").read_bytes()
    for cut in (0, 7, 100, len(original) // 2, len(original) - 1):
        (path / "model.safetensors").write_bytes(original[:cut])
        _expect_refused(path, "truncated or corrupted")
    (path / "model.safetensors").unlink()
    _expect_refused(path, "model.safetensors is missing")
    (path / "manifest.json").write_text('{"format":"torchslim-artifact","version":1}')
    _expect_refused(path, "version 1 is not supported")
    (path / "manifest.json").unlink()
    _expect_refused(path, "not a torchslim artifact")


def test_a_manifest_edited_without_its_checksum_is_refused(tmp_path):
    path = save_artifact(_lenet(0.9, 4), tmp_path / "a", architecture=ARCH, extra={"metrics": {"value": 0.5}})
    rewrite_manifest(path, lambda m: m["metrics"].update(value=0.99), reseal=False)
    _expect_refused(path, "modified after it was written")


def test_cli_refuses_a_damaged_artifact_with_exit_2(tmp_path):
    path = save_artifact(_lenet(0.9, 4), tmp_path / "a", architecture=ARCH)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 4
    (path / "model.safetensors").write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: model.safetensors was modified after it was written (sha256 mismatch)"]


def test_inspect_shows_layers_totals_and_the_plain_manifest(tmp_path):
    path = save_artifact(_lenet(0.95, 4), tmp_path / "a", architecture=ARCH, extra={"input_shape": [1, 8, 8]})
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["layer", "shape", "sparsity", "bits", "encoding", "bytes"]
    assert lines[2].split()[:5] == ["fc2", "100x300", "95.0%", "4", "sparse4+zstd"]
    assert lines[4].startswith("params 50,610, nonzero 2,920")
    assert lines[5].startswith(f"bytes {size_bytes(path):,}: tensors ")

    info = json.loads(CliRunner().invoke(cli, ["inspect", str(path), "--json"]).output)
    assert info["manifest"] == read_manifest(path)
    assert [r["name"] for r in info["layers"]] == ["fc1", "fc2", "fc3"]
    assert [r["nonzero"] for r in info["layers"]] == [960, 1500, 50]
    bytes_ = info["totals"]["bytes"]
    assert sum(bytes_["files"].values()) == bytes_["total"] == size_bytes(path)
    assert bytes_["manifest"] + bytes_["tensors"] + bytes_["container"] == bytes_["total"]
    assert sum(r["bytes"] for r in info["layers"]) == bytes_["tensors"]  # every stored tensor is in a layer



@pytest.mark.parametrize("version", [4, 5, 6, 7, 8, 9])
def test_an_artifact_written_by_an_earlier_format_still_loads(tmp_path, monkeypatch, version):
    """Earlier formats differ only in the manifest's dictionary (and 4 in its seal): each stays readable."""
    from torchslim.artifact import _format

    model = _lenet(sparsity=0.9, bits=4)
    monkeypatch.setattr(_format, "_HEADER", _format._header(version))
    path = save_artifact(model, tmp_path / "a", architecture=ARCH)
    monkeypatch.undo()
    assert json.loads((path / "manifest.json").read_text())["version"] == version
    loaded, manifest = load_artifact(path)
    assert manifest["version"] == version and torch.equal(loaded(X), model(X))

def test_manifest_dictionary_is_frozen_for_the_format_version():
    """Changing the dictionary makes saved manifests unreadable: it needs a new ARTIFACT_VERSION (and this pin)."""
    import hashlib

    from torchslim.artifact import ARTIFACT_VERSION
    from torchslim.artifact._dictionary import MANIFEST_DICTIONARY

    from torchslim.artifact._dictionary_v4 import MANIFEST_DICTIONARY as VERSION_4
    from torchslim.artifact._dictionary_v5 import MANIFEST_DICTIONARY as VERSION_5
    from torchslim.artifact._dictionary_v6 import MANIFEST_DICTIONARY as VERSION_6
    from torchslim.artifact._dictionary_v7 import MANIFEST_DICTIONARY as VERSION_7
    from torchslim.artifact._dictionary_v8 import MANIFEST_DICTIONARY as VERSION_8
    from torchslim.artifact._dictionary_v9 import MANIFEST_DICTIONARY as VERSION_9

    assert ARTIFACT_VERSION == 10
    assert hashlib.sha256(MANIFEST_DICTIONARY).hexdigest() == \
        "5440788d51a965cee908b103f7c0515c643a3be99f4ad25887ec27d345961700"
    # formats 4's to 9's, kept for reading: never change
    assert hashlib.sha256(VERSION_9).hexdigest() == "9b1766601661afe6ff1089dc032d0598628cafa7d3257250cfc0827fbefeb546"
    assert hashlib.sha256(VERSION_8).hexdigest() == "58f2f02ca475305282c16fbd96ffb43e4d5f7aa99ef4b44a12efc7a47e623739"
    assert hashlib.sha256(VERSION_7).hexdigest() == "45162664ae55fa14074453357edcb7b9f12675ddfdcfcb115dfba89f131e4ece"
    assert hashlib.sha256(VERSION_6).hexdigest() == "f57ac7b632621e91f7106ec2300e6a2f49e15f2b97fbe4d94d0c6c09b68c28d9"
    assert hashlib.sha256(VERSION_4).hexdigest() == "4c6235ee093b95ecd0536d4e8e3a42ca75c624fa8d8ab3f63ac0c90e344d9d5d"
    assert hashlib.sha256(VERSION_5).hexdigest() == "0a2e316f618605d2beac235771cd37c411f0d28c0112dc465e674c5f7ad0fe36"


@pytest.mark.parametrize("old, other", [(4, 5), (5, 4), (5, 6)])
def test_an_artifact_written_by_an_older_format_still_loads(tmp_path, monkeypatch, old, other):
    """Formats 4 and 5 differ only in the manifest's dictionary: their artifacts load, with their version, and
    compute what they computed; a header whose version was changed, or a version no torchslim wrote, is refused."""
    from torchslim.artifact import _format

    model = _lenet()
    current = _format._manifest_dictionary
    with monkeypatch.context() as m:  # what the old format's writer did: its header, its dictionary
        m.setattr(_format, "_HEADER", _format._header(old))
        m.setattr(_format, "_manifest_dictionary", lambda version: current(old))
        path = save_artifact(model, tmp_path / f"v{old}", architecture=ARCH)
    assert json.loads((path / "manifest.json").read_text())["version"] == old
    reloaded, manifest = load_artifact(path)
    assert manifest["version"] == old
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    with pytest.raises(ArtifactError, match="modified"):  # a header turned into another version is refused
        _format._read_payload(path, other)
    (path / "manifest.json").write_text(json.dumps({**_format._header(old), "version": 3}))
    with pytest.raises(ArtifactError,
                       match="artifact format version 3 is not supported .this torchslim reads 4, 5, 6."):
        load_artifact(path)
