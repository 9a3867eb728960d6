"""Opening an artifact from a stranger: no code without consent, no file outside the folder, nothing unnamed."""

import os
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from artifact_support import rewrite_manifest
from torchslim.artifact import ArtifactError, describe_artifact, load_artifact, read_manifest, save_artifact
from torchslim.cli import cli

ARCH = {"name": "lenet300_100", "kwargs": {"hidden1": 16, "hidden2": 8}}

FACTORY_MODULE = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, hidden), nn.Linear(hidden, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

def build(hidden=12):
    return Net(hidden)
'''


def _builtin(tmp_path):
    from torchslim.models import LeNet300100

    torch.manual_seed(0)
    return save_artifact(LeNet300100(hidden1=16, hidden2=8).eval(), tmp_path / "a", architecture=ARCH,
                         extra={"input_shape": [1, 8, 8]})


@pytest.fixture
def hostile(tmp_path):
    """A valid artifact whose manifest was edited to build its model with ``os:system`` and resealed."""
    marker = tmp_path / "pwned"
    path = _builtin(tmp_path)
    rewrite_manifest(path, lambda m: m.update(architecture={"factory": "os:system",
                                                            "kwargs": {"command": f"touch {marker}"}}))
    return path, marker


def test_a_resealed_artifact_naming_a_shell_factory_is_refused_everywhere_and_runs_nothing(hostile, tmp_path):
    path, marker = hostile
    assert read_manifest(path)["architecture"]["factory"] == "os:system"  # the seal itself holds: only a key tells
    with pytest.raises(ArtifactError, match=r"importing and calling 'os:system' \(user code\); refused: pass "
                                            r"--trust-code"):
        load_artifact(path)
    runner = CliRunner()
    for args in (["export", str(path), "--out", str(tmp_path / "m.onnx")],
                 ["eval", str(path), "--domain", str(_digits_domain(tmp_path))]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "'os:system'" in lines[0] and "--trust-code" in lines[0]
    assert not (tmp_path / "m.onnx").exists()
    # inspect shows the manifest without building the model
    result = runner.invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert '"factory": "os:system"' in result.output and "params 1,266," in result.output
    assert not marker.exists()


def _digits_domain(tmp_path):
    domain = tmp_path / "domain.yaml"
    domain.write_text("name: d\ntask: image-classification\ndata: {source: digits}\n"
                      "model: {factory: 'trusted_net:build', kwargs: {hidden: 12}}\n")
    return domain


@pytest.fixture
def factory_artifact(tmp_path):
    """An artifact of a user factory model, saved from one folder; its module lives in ``code/``."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "trusted_net.py").write_text(FACTORY_MODULE)
    sys.path.insert(0, str(code))
    try:
        import trusted_net

        torch.manual_seed(0)
        model = trusted_net.build(12).eval()
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("trusted_net", None)
    path = save_artifact(model, tmp_path / "made" / "artifact",
                         architecture={"factory": "trusted_net:build", "kwargs": {"hidden": 12}},
                         extra={"input_shape": [1, 8, 8]})
    return path, code, model


def test_trust_code_imports_the_factory_from_code_dir_and_restores_sys_path(factory_artifact, tmp_path,
                                                                           monkeypatch):
    path, code, model = factory_artifact
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ArtifactError, match="'trusted_net:build'"):
        load_artifact(path)
    assert "trusted_net" not in sys.modules  # refused before any import
    before = list(sys.path)
    try:
        loaded, _ = load_artifact(path, trust_code=True, code_dir=code)
    finally:
        sys.modules.pop("trusted_net", None)
    assert sys.path == before
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ArtifactError, match="cannot import module 'trusted_net'"):
        load_artifact(path, trust_code=True)  # trusted, but the module is not where it is looked for


def test_cli_trust_code_and_code_dir_export_a_factory_artifact_from_another_folder(factory_artifact, tmp_path,
                                                                                monkeypatch):
    path, code, _ = factory_artifact
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    refused = runner.invoke(cli, ["export", str(path), "--out", "m.onnx"])
    assert refused.exit_code == 2 and "trusted_net:build" in refused.output
    try:
        result = runner.invoke(cli, ["export", str(path), "--out", "m.onnx", "--trust-code", "--code-dir",
                                     str(code)])
    finally:
        sys.modules.pop("trusted_net", None)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").stat().st_size > 4 * (64 * 12 + 12 * 10)


@pytest.mark.parametrize("name", ["../secret.onnx", "/etc/passwd", "sub/model.int8.onnx", ".hidden", "..",
                                  "manifest.json"])
def test_payload_names_that_leave_the_folder_are_refused(tmp_path, name):
    path = _builtin(tmp_path)
    (tmp_path / "secret.onnx").write_bytes(b"not yours")
    rewrite_manifest(path, lambda m: m["payloads"].update({name: "0" * 64}))
    with pytest.raises(ArtifactError, match="not a plain file name inside the artifact folder"):
        read_manifest(path)


def test_an_int8_model_that_is_not_a_recorded_payload_is_never_read(tmp_path):
    path = _builtin(tmp_path)
    rewrite_manifest(path, lambda m: m.update(quantization={"layers": {}, "int8_onnx": "../secret.onnx"}))
    with pytest.raises(ArtifactError, match="is not a recorded payload"):
        load_artifact(path)


@pytest.mark.parametrize("intruder", ["model.int8.onnx", "notes.txt", "folder", "link"])
def test_a_file_the_manifest_does_not_name_is_refused(tmp_path, intruder):
    path = _builtin(tmp_path)
    (tmp_path / "outside").write_bytes(b"x")
    target = path / intruder
    if intruder == "folder":
        target.mkdir()
    elif intruder == "link":
        target.symlink_to(tmp_path / "outside")
    else:
        target.write_bytes(b"foreign bytes")
    with pytest.raises(ArtifactError, match=f"holds '{intruder}', which its manifest does not name"):
        load_artifact(path)


def test_a_named_file_replaced_by_a_link_is_refused(tmp_path):
    path = _builtin(tmp_path)
    real = tmp_path / "real.safetensors"
    os.replace(path / "model.safetensors", real)
    (path / "model.safetensors").symlink_to(real)
    with pytest.raises(ArtifactError, match="model.safetensors is not a regular file"):
        read_manifest(path)


def test_a_run_folder_given_for_its_artifact_says_where_the_artifact_is(tmp_path):
    save_artifact(nn.Linear(2, 2), tmp_path / "run" / "artifact", architecture=ARCH)
    with pytest.raises(ArtifactError, match=r"is a run folder; its artifact is .*run/artifact"):
        read_manifest(tmp_path / "run")
    save_artifact(nn.Linear(2, 2), tmp_path / "search" / "best", architecture=ARCH)
    with pytest.raises(ArtifactError, match=r"is a search folder; its best artifact is .*search/best"):
        read_manifest(tmp_path / "search")


def test_inspect_counts_what_the_model_would_count(tmp_path):
    """describe_artifact reads tensors only; its totals equal count_params of the rebuilt model."""
    from torchslim.evaluate import count_params
    from torchslim.models import LeNet5
    from torchslim.prune import MagnitudeConfig, prune_
    from torchslim.quantize import KMeansConfig, quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    prune_(model, MagnitudeConfig(sparsity=0.5))
    quantize_(model, KMeansConfig(bits=4))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    torch.manual_seed(0)
    lenet = LeNet5().eval()
    for m, arch in ((model, {"name": "lenet5", "kwargs": {}}), (lenet, {"name": "lenet5", "kwargs": {}})):
        path = save_artifact(m, tmp_path / str(id(m)), architecture=arch)
        totals = describe_artifact(path)["totals"]
        assert (totals["params"], totals["nonzero"]) == count_params(m)
