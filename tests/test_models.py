import pytest
import torch
from safetensors.torch import save_file

from torchslim._errors import ConfigError
from torchslim.domain import ModelSpec
from torchslim.models import BUILTIN_MODELS, build_model, check_fits


@pytest.mark.parametrize("name, shape", [("lenet300_100", (1, 8, 8)), ("lenet5", (1, 8, 8)),
                                         ("mnist1d_cnn", (1, 40)), ("mnist1d_mlp", (1, 40))])
def test_builtin_models_map_their_input_shape_to_ten_logits(name, shape):
    model = build_model(ModelSpec(name=name))
    assert tuple(model.input_shape) == shape
    assert model(torch.rand(3, *shape)).shape == (3, 10)


def test_reference_layer_names_and_sizes():
    mlp = build_model(ModelSpec(name="lenet300_100"))
    assert [(n, m.in_features, m.out_features) for n, m in mlp.named_children()] == [
        ("fc1", 64, 300), ("fc2", 300, 100), ("fc3", 100, 10)]
    lenet5 = build_model(ModelSpec(name="lenet5"))
    assert (lenet5.conv1.out_channels, lenet5.conv2.out_channels) == (32, 64)
    assert (lenet5.fc1.in_features, lenet5.fc1.out_features) == (256, 256)


SIZED_FROM_DATA = {"mlp": {"input_shape": [20], "num_classes": 3}}  # built-ins whose input comes from the data


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_width_kwarg_makes_smaller_students(name):
    given = SIZED_FROM_DATA.get(name, {})
    full = sum(p.numel() for p in build_model(ModelSpec(name=name, kwargs=given)).parameters())
    small = sum(p.numel() for p in build_model(ModelSpec(name=name, kwargs={**given, "width": 0.25})).parameters())
    assert small < full / 4


def test_mlp_is_sized_from_the_data_it_is_given():
    from torchslim.models import data_kwargs_asked, with_data_kwargs

    spec = ModelSpec(name="mlp", kwargs={"hidden": [32, 16]})
    assert data_kwargs_asked(spec) == {"input_shape", "num_classes"}
    sized = with_data_kwargs(spec, ".", (20,), 3)
    assert sized.kwargs == {"hidden": [32, 16], "input_shape": [20], "num_classes": 3}
    model = build_model(sized)
    assert [m.weight.shape[1] for m in model.modules() if isinstance(m, torch.nn.Linear)] == [20, 32, 16]
    assert model(torch.rand(4, 20)).shape == (4, 3)
    assert with_data_kwargs(ModelSpec(name="lenet300_100", kwargs={"num_classes": 10}), ".", (1, 8, 8), 4).kwargs \
        == {"num_classes": 10}  # what the domain gives is kept
    with pytest.raises(ConfigError, match="hidden must be a list of positive integers"):
        build_model(ModelSpec(name="mlp", kwargs={"input_shape": [4], "hidden": [8, -1]}))


def test_wrong_data_shape_is_refused_before_training():
    model = build_model(ModelSpec(name="lenet5"))
    with pytest.raises(ConfigError, match=r"expects inputs of shape \(N, 1, 8, 8\) but the data has shape \(N, 1, 40\)"):
        check_fits(model, torch.rand(2, 1, 40), 10)
    with pytest.raises(ConfigError, match="12 classes"):
        check_fits(model, torch.rand(2, 1, 8, 8), 12)


def test_an_embedding_given_float_ids_is_told_to_cast_them():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(ConfigError, match=r"^model: forward pass on data of shape \(2, 3\) failed: an embedding was "
                                          r"given float ids: .* self.embed\(x.long\(\)\)$"):
        check_fits(model, torch.tensor([[1.0, 2.0, 3.0]] * 2), 2)


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ConfigError, match="model.name: unknown model 'resnet'; known: lenet300_100"):
        build_model(ModelSpec(name="resnet"))
    with pytest.raises(ConfigError, match="model.kwargs"):
        build_model(ModelSpec(name="lenet5", kwargs={"depth": 3}))


def test_user_factory_with_safetensors_weights(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def tiny(hidden=8):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),"
        " torch.nn.Linear(hidden, 10))\n")
    spec = ModelSpec(factory="mymodels:tiny", kwargs={"hidden": 8})
    reference = build_model(spec, tmp_path)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = build_model(ModelSpec(factory="mymodels:tiny", kwargs={"hidden": 8}, weights="w.safetensors"), tmp_path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), reference(x))
    with pytest.raises(ConfigError, match="model.weights: w.safetensors does not fit the model"):
        build_model(ModelSpec(factory="mymodels:tiny", kwargs={"hidden": 9}, weights="w.safetensors"), tmp_path)
    with pytest.raises(ConfigError, match="model.factory: module 'mymodels' has no callable 'nope'"):
        build_model(ModelSpec(factory="mymodels:nope"), tmp_path)


def test_a_factory_asking_only_for_num_classes_gets_it_from_the_data_and_its_weights(tmp_path):
    """Its input shape comes from a probe built before the data is read: the probe needs a class count and must
    not load weights sized for the real one."""
    import numpy as np

    from torchslim.recipe import load_recipe
    from torchslim.runner import prepare

    (tmp_path / "clsmodels.py").write_text(
        "import torch\n"
        "def build(num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, num_classes))\n")
    rng = np.random.default_rng(0)
    x, y = rng.random((90, 12), dtype=np.float32), np.arange(90) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    weights = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "domain.yaml").write_text(
        "name: three\ntask: tabular-classification\ndata: {source: 'npz:d.npz', seed: 0}\n"
        "model: {factory: 'clsmodels:build', weights: w.safetensors}\nmetric: accuracy\n")
    (tmp_path / "recipe.yaml").write_text("domain: domain.yaml\nstages:\n  - quantize: {method: kmeans, bits: 4}\n")
    ctx = prepare(load_recipe(tmp_path / "recipe.yaml"), log=lambda _: None)
    assert ctx.architecture["kwargs"] == {"num_classes": 3}
    assert torch.equal(ctx.model[1].weight, weights["1.weight"])


def test_an_image_folder_takes_the_input_shape_a_factory_is_given(tmp_path):
    """A model that does not keep ``input_shape`` as an attribute: the shape in its kwargs sizes the images."""
    import numpy as np
    from PIL import Image

    from torchslim.recipe import load_recipe
    from torchslim.runner import prepare

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "convmodels.py").write_text(
        "import torch\n"
        "def build(input_shape, num_classes):\n"
        "    c, h, w = input_shape\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, num_classes))\n")
    (tmp_path / "domain.yaml").write_text(
        "name: img\ntask: image-classification\ndata: {source: 'imagefolder:imgs', seed: 0}\n"
        "model: {factory: 'convmodels:build', kwargs: {input_shape: [3, 12, 12]}}\nmetric: accuracy\n")
    (tmp_path / "recipe.yaml").write_text("domain: domain.yaml\nstages:\n  - train: {epochs: 1, lr: 0.01}\n")
    ctx = prepare(load_recipe(tmp_path / "recipe.yaml"), log=lambda _: None)
    assert ctx.splits.input_shape == (3, 12, 12) and ctx.architecture["kwargs"]["num_classes"] == 3
