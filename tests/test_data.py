import numpy as np
import pytest
import torch
from PIL import Image

from torchslim._errors import ConfigError
from torchslim.data import load_splits
from torchslim.domain import DataSpec


def test_digits_shapes_range_and_split_sizes():
    s = load_splits(DataSpec(source="digits"))
    x = s.train.tensors[0]
    assert tuple(x.shape[1:]) == (1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    sizes = (len(s.train), len(s.val), len(s.test))
    assert sum(sizes) == 1797 and sizes[2] == 360 and sizes[1] == 180
    assert s.num_classes == 10 and s.info["stratified"]


def test_digits_split_is_stratified_and_seeded():
    a, b, c = (load_splits(DataSpec(source="digits", seed=k)) for k in (0, 0, 1))
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    counts = torch.bincount(a.test.tensors[1], minlength=10).float()
    assert counts.min() >= 34 and counts.max() <= 38  # 360 test samples over 10 near-balanced classes


def test_folds_cut_the_training_and_validation_samples_and_leave_the_test_split(tmp_path):
    from torchslim.domain import Fold

    whole = load_splits(DataSpec(source="digits"))
    pooled = {tuple(x.flatten().tolist()) for split in (whole.train, whole.val) for x in split.tensors[0]}
    folds = [load_splits(DataSpec(source="digits", fold=Fold(index=i, of=3))) for i in range(3)]
    seen = [tuple(x.flatten().tolist()) for f in folds for x in f.val.tensors[0]]
    assert len(seen) == len(set(seen)) == len(pooled) == 1437 and set(seen) == pooled  # each sample validates once
    for i, f in enumerate(folds):
        assert (len(f.train), len(f.val)) == (958, 479) and f.info["fold"] == {"index": i, "of": 3}
        assert torch.equal(f.test.tensors[0], whole.test.tensors[0])  # no decision sees the test split
        train = {tuple(x.flatten().tolist()) for x in f.train.tensors[0]}
        assert not train & {tuple(x.flatten().tolist()) for x in f.val.tensors[0]}
        counts = torch.bincount(f.val.tensors[1], minlength=10)
        assert counts.min() >= 46 and counts.max() <= 50  # stratified: ~48 of each digit
    again = load_splits(DataSpec(source="digits", fold=Fold(index=1, of=3)))
    assert torch.equal(again.val.tensors[0], folds[1].val.tensors[0])
    np.savez(tmp_path / "a.npz", x=np.random.default_rng(0).random((30, 4)).astype(np.float32), y=np.arange(30) % 2)
    with pytest.raises(ConfigError, match="data.fold.of: 40 parts of 24 training and validation samples"):
        load_splits(DataSpec(source="npz:a.npz", fold=Fold(index=0, of=40)), base_dir=tmp_path)


def test_mnist1d_generated_locally_with_its_own_test_split():
    s = load_splits(DataSpec(source="mnist1d"))
    assert tuple(s.train.tensors[0].shape[1:]) == (1, 40)
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)


def test_npz_source_with_and_without_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((100, 8, 8)).astype(np.float32), np.repeat(np.arange(10), 10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    s = load_splits(DataSpec(source="npz:a.npz"), base_dir=tmp_path, input_shape=(1, 8, 8))
    assert tuple(s.train.tensors[0].shape[1:]) == (1, 8, 8) and len(s.test) == 20
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:30], y_test=y[:30])
    s = load_splits(DataSpec(source="npz:b.npz"), base_dir=tmp_path, input_shape=(1, 8, 8))
    assert len(s.test) == 30 and len(s.train) + len(s.val) == 100


def test_npz_errors_name_the_problem(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="has no array 'y'"):
        load_splits(DataSpec(source="npz:c.npz"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="npz file not found"):
        load_splits(DataSpec(source="npz:missing.npz"), base_dir=tmp_path)
    np.savez(tmp_path / "d.npz", x=np.full((20, 2), np.nan), y=np.arange(20) % 2)
    with pytest.raises(ConfigError, match=r"^data.source: 'npz:d.npz': array x contains NaN or Inf \(40 values, the "
                                          r"first in sample 0\): impute or drop them first$"):
        load_splits(DataSpec(source="npz:d.npz"), base_dir=tmp_path)
    np.savez(tmp_path / "one.npz", x=np.zeros((20, 2)), y=np.zeros(20, np.int64))  # any model scores 100 %
    with pytest.raises(ConfigError, match="^data.source: every label is 0: a classifier needs at "
                                          "least two classes$"):
        load_splits(DataSpec(source="npz:one.npz"), base_dir=tmp_path)
    np.savez(tmp_path / "unseen.npz", x=np.zeros((20, 2)), y=np.arange(20) % 2, x_test=np.zeros((6, 2)),
             y_test=np.arange(6) % 3)
    with pytest.raises(ConfigError, match=r"^data.source: y_test has label\(s\) \[2\] that no training sample has"):
        load_splits(DataSpec(source="npz:unseen.npz"), base_dir=tmp_path)


def test_npz_labels_given_as_class_names_or_as_a_column(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    names = np.array(["wolf", "cat", "dog"] * 4)
    np.savez(tmp_path / "n.npz", x=x, y=names, x_test=x[:3], y_test=names[:3].astype("S"))  # (bytes too)
    s = load_splits(DataSpec(source="npz:n.npz", val_fraction=0.25), base_dir=tmp_path)
    assert s.labels == ["cat", "dog", "wolf"] and s.num_classes == 3
    assert s.test.tensors[1].tolist() == [2, 0, 1]
    xs = torch.cat([s.train.tensors[0], s.val.tensors[0]])
    ys = torch.cat([s.train.tensors[1], s.val.tensors[1]])
    assert all(["cat", "dog", "wolf"].index(names[int(r[0]) // 2]) == int(label) for r, label in zip(xs, ys))
    np.savez(tmp_path / "mixed.npz", x=x, y=names, x_test=x[:3], y_test=np.arange(3))
    with pytest.raises(ConfigError, match=r"array y_test holds int64 values but y holds class names"):
        load_splits(DataSpec(source="npz:mixed.npz"), base_dir=tmp_path)
    np.savez(tmp_path / "col.npz", x=x, y=(np.arange(12) % 3)[:, None])
    s = load_splits(DataSpec(source="npz:col.npz", val_fraction=0.25), base_dir=tmp_path)
    assert s.num_classes == 3 and s.labels == ["0", "1", "2"]


def test_imagefolder_refuses_a_class_without_images_and_skips_hidden_folders(tmp_path):
    for label in ("a", "b", "c"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
    for label in ("a", "c"):
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs" / "b" / "nested").mkdir()  # images one level down are not the class's
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "b" / "nested" / "0.png")
    with pytest.raises(ConfigError, match=r"^data.source: .*imgs: no image directly in class folder\(s\) b \(read: "
                                          r"\.png .jpg"):
        load_splits(DataSpec(source="imagefolder:imgs"), base_dir=tmp_path, input_shape=(1, 8, 8))
    (tmp_path / "imgs" / "b").rename(tmp_path / "imgs" / ".ipynb_checkpoints")  # hidden: not a class
    s = load_splits(DataSpec(source="imagefolder:imgs", test_fraction=0.34, val_fraction=0.33), base_dir=tmp_path,
                    input_shape=(1, 8, 8))
    assert s.labels == ["a", "c"] and s.num_classes == 2


def test_imagefolder_reads_resizes_and_labels_by_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    s = load_splits(DataSpec(source="imagefolder:imgs"), base_dir=tmp_path, input_shape=(1, 8, 8))
    assert s.labels == ["cat", "dog"] and tuple(s.train.tensors[0].shape[1:]) == (1, 8, 8)
    assert len(s.train) + len(s.val) + len(s.test) == 20
    assert 0.0 <= float(s.train.tensors[0].min()) and float(s.train.tensors[0].max()) <= 1.0


def test_an_image_folder_shape_that_cannot_be_right_is_refused_before_decoding(tmp_path, monkeypatch):
    from torchslim.data import _sources

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    with pytest.raises(ConfigError, match=r"^model.kwargs.input_shape: an image folder is read as \(C, H, W\) .*"
                                          r"got \[8, 8\]$"):
        load_splits(DataSpec(source="imagefolder:imgs"), base_dir=tmp_path, input_shape=(8, 8))
    with pytest.raises(ConfigError, match=r"got \[8, 8, 3\]$"):  # channels last
        load_splits(DataSpec(source="imagefolder:imgs"), base_dir=tmp_path, input_shape=(8, 8, 3))
    decoded = []
    monkeypatch.setattr(_sources, "_read_image", lambda *a: decoded.append(a) or np.zeros((3, 4000, 4000)))
    with pytest.raises(ConfigError, match=r"^model.kwargs.input_shape: 6 images resized to 3x4000x4000 would take "
                                          r"2.1 GiB to decode \(at most 1 GiB\): is the shape right\?$"):
        monkeypatch.setattr(_sources, "MAX_DECODED_BYTES", 2**30)
        load_splits(DataSpec(source="imagefolder:imgs"), base_dir=tmp_path, input_shape=(3, 4000, 4000))
    assert decoded == []  # refused before any image was read


def test_unknown_source():
    with pytest.raises(ConfigError, match="data.source: unknown data source 'cifar'"):
        load_splits(DataSpec(source="cifar"))


def test_npz_integer_ids_arrive_as_exact_float32_and_past_2_to_24_are_refused(tmp_path):
    ids = np.array([[0, 7, 16_777_216], [3, 2, 1]] * 10, dtype=np.int64)
    np.savez(tmp_path / "ids.npz", x=ids, y=np.arange(20) % 2)
    s = load_splits(DataSpec(source="npz:ids.npz", test_fraction=0.2, val_fraction=0.1), base_dir=tmp_path)
    x = torch.cat([s.train.tensors[0], s.val.tensors[0], s.test.tensors[0]])
    assert x.dtype == torch.float32 and torch.equal(x.long().float(), x) and int(x.max()) == 2 ** 24
    assert s.info["preprocessing"].endswith("integers as float32 (exact)")
    np.savez(tmp_path / "big.npz", x=ids + 1, y=np.arange(20) % 2)
    with pytest.raises(ConfigError, match=r"^data.source: big.npz: array x holds integers above 2\*\*24"):
        load_splits(DataSpec(source="npz:big.npz"), base_dir=tmp_path)
