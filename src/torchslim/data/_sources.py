"""Each source returns arrays; splitting is shared so every source is split the same seeded, stratified way."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim._errors import ConfigError, brief, did_you_mean
from torchslim._yaml import file_problem, os_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_LABEL = 100_000  # labels are class indices; a larger one is a mistake, and would size the model's output
MAX_IMAGE_PIXELS = 2**26  # per image, before resizing to the model's input


@dataclass
class Splits:
    """Train / validation / test tensors. Decisions use train and val only; test is for reporting."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


@dataclass
class _Arrays:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    labels: list[str] | None = None
    preprocessing: str = ""


@functools.lru_cache(maxsize=2)
def _digits() -> _Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return _Arrays(x, d.target.astype(np.int64), labels=[str(i) for i in range(10)],
                   preprocessing="sklearn load_digits; pixel / 16 -> [0, 1]; shape (N, 1, 8, 8)")


@functools.lru_cache(maxsize=2)
def _mnist1d() -> _Arrays:
    from mnist1d.data import get_dataset_args, make_dataset

    # Generated locally from the package's templates; the download path is never used.
    d = make_dataset(get_dataset_args())
    return _Arrays(d["x"].astype(np.float32)[:, None], d["y"].astype(np.int64),
                   d["x_test"].astype(np.float32)[:, None], d["y_test"].astype(np.int64),
                   labels=[str(i) for i in range(10)],
                   preprocessing="mnist1d make_dataset(get_dataset_args()); shape (N, 1, 40)")


def _check_array(path: Path, name: str, a: np.ndarray, *, labels: bool = False) -> None:
    """Numbers only; labels: one dimension of whole numbers in [0, MAX_LABEL)."""
    if a.dtype.kind not in "biuf":
        raise ConfigError("data.source", f"{path.name}: array {name} holds {a.dtype} values; expected "
                                         f"{'integer labels' if labels else 'real numbers'}")
    if labels:
        if a.ndim != 1:
            raise ConfigError("data.source", f"{path.name}: array {name} has shape {a.shape}; expected one label "
                                             f"per sample, shape (N,)")
        if a.size and (not np.isfinite(a).all() or (a != np.round(a)).any()
                       or a.min() < 0 or a.max() >= MAX_LABEL):
            raise ConfigError("data.source", f"{path.name}: array {name}: labels must be whole numbers in "
                                             f"[0, {MAX_LABEL})")
    elif a.ndim < 1 or len(a) == 0:
        raise ConfigError("data.source", f"{path.name}: array {name} has shape {a.shape}; expected (N, ...) with "
                                         f"N >= 1 samples")


def _npz(path: Path, input_shape: tuple[int, ...] | None) -> _Arrays:
    problem = file_problem(path)
    if problem == "file not found":
        raise ConfigError("data.source", f"npz file not found: {path}")
    if problem:
        raise ConfigError("data.source", f"{path}: {problem}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # the file closes even when np.load fails
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # numpy and zipfile raise many types for damaged files
        raise ConfigError("data.source", f"cannot read {path} as npz: {exc}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ConfigError("data.source", f"{path.name} has no array {key!r} (found: {', '.join(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ConfigError("data.source", f"{path.name} must have both x_test and y_test, or neither")
    for key in ("y", "y_test"):  # a column of labels, (N, 1), is one label per sample
        if key in arrays and arrays[key].ndim == 2 and arrays[key].shape[1] == 1:
            arrays[key] = arrays[key][:, 0]
    names = _class_names(path, arrays)
    for x_key, y_key in (("x", "y"), ("x_test", "y_test")):
        if x_key in arrays:
            _check_array(path, x_key, arrays[x_key])
            _check_array(path, y_key, arrays[y_key], labels=True)
            if len(arrays[x_key]) != len(arrays[y_key]):
                raise ConfigError("data.source", f"{path.name}: {x_key} has {len(arrays[x_key])} samples but "
                                                 f"{y_key} has {len(arrays[y_key])} labels")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
        raise ConfigError("data.source", f"{path.name}: x_test has samples of shape {arrays['x_test'].shape[1:]} "
                                         f"but x has {arrays['x'].shape[1:]}")

    integers = arrays["x"].dtype.kind in "biu"
    for key in ("x", "x_test"):  # float32 holds every whole number up to 2**24 exactly: token ids, counts
        if integers and key in arrays and arrays[key].size and np.abs(arrays[key]).max() > 2 ** 24:
            raise ConfigError("data.source", f"{path.name}: array {key} holds integers above 2**24, which float32 "
                                             f"inputs cannot represent exactly")

    def fit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        # A single-channel model accepts (N, H, W) / (N, L) arrays by adding the channel axis.
        if input_shape is not None and x.shape[1:] != input_shape and x.shape[1:] == input_shape[1:] \
                and input_shape[0] == 1:
            x = x[:, None]
        return x

    return _Arrays(fit(arrays["x"]), arrays["y"].astype(np.int64),
                   fit(arrays["x_test"]) if "x_test" in arrays else None,
                   arrays["y_test"].astype(np.int64) if "y_test" in arrays else None, labels=names,
                   preprocessing=f"npz {path.name}; "
                                 f"{'integers as float32 (exact)' if integers else 'float32 as stored'}"
                                 + ("; class names in sorted order as labels 0, 1, ..." if names else ""))


def _class_names(path: Path, arrays: dict[str, np.ndarray]) -> list[str] | None:
    """Labels given as names (strings): replaced in ``arrays`` by their index among the sorted names of both
    label arrays, which are returned; None when the labels are numbers."""
    keys = [k for k in ("y", "y_test") if k in arrays]
    if not any(arrays[k].dtype.kind in "US" for k in keys):
        return None
    for k in keys:
        if arrays[k].dtype.kind not in "US":
            raise ConfigError("data.source", f"{path.name}: array {k} holds {arrays[k].dtype} values but "
                                             f"{'y_test' if k == 'y' else 'y'} holds class names; give both as names")
    text = {k: arrays[k].astype(str) for k in keys}  # bytes decode as ASCII; shapes are checked with the numbers
    names = sorted(set().union(*(np.unique(t).tolist() for t in text.values())))
    if len(names) > MAX_LABEL:
        raise ConfigError("data.source", f"{path.name}: {len(names):,} class names; at most {MAX_LABEL:,}")
    for k, t in text.items():
        arrays[k] = np.searchsorted(np.array(names), t).astype(np.int64)
    return names


def _read_image(f: Path, mode: str, size: tuple[int, int], root: Path) -> np.ndarray:
    """One image as (C, H, W) floats in [0, 1]; a damaged, huge or special file is a ConfigError naming it."""
    from PIL import Image

    rel = f.relative_to(root.parent) if f.is_relative_to(root.parent) else f
    problem = file_problem(f)
    if problem:
        raise ConfigError("data.source", f"image {rel}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes: the pixels are still read
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{img.width}x{img.height} pixels is more than {MAX_IMAGE_PIXELS:,}")
                arr = np.asarray(img.convert(mode).resize(size, Image.BILINEAR), dtype=np.float32)
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ValueError, ...)
        raise ConfigError("data.source", f"cannot read image {rel}: {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


MAX_DECODED_BYTES = 4 * 2**30  # an image folder larger than this once decoded is refused before decoding


def _imagefolder(path: Path, input_shape: tuple[int, ...] | None) -> _Arrays:
    try:
        if not path.is_dir():
            raise ConfigError("data.source", f"image folder not found: {path}")
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = {name: sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                 for name in classes}
    except OSError as exc:
        raise ConfigError("data.source", f"cannot read image folder {path}: {os_reason(exc)}") from None
    if len(classes) < 2:
        raise ConfigError("data.source", f"{path} must hold one sub-folder per class (found {len(classes)})")
    empty = [name for name in classes if not files[name]]
    if empty:  # as torchvision's ImageFolder: a class without an image is a mistake, not a class to learn
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ConfigError("data.source", f"{path}: no image directly in class folder(s) {shown} (read: "
                                         f"{' '.join(IMAGE_SUFFIXES)})")
    if input_shape is None:
        raise ConfigError("model", "an image folder needs a model that declares an input shape (C, H, W): an "
                                   "input_shape attribute on the model, or input_shape in model.kwargs")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ConfigError("model.kwargs.input_shape", f"an image folder is read as (C, H, W) with C 1 (grayscale) or "
                                                      f"3 (RGB), channels first; got {list(input_shape)}")
    channels, height, width = input_shape
    count = sum(len(f) for f in files.values())
    decoded = count * channels * height * width * 8  # float64 while decoding
    if decoded > MAX_DECODED_BYTES:
        raise ConfigError("model.kwargs.input_shape", f"{count:,} images resized to {channels}x{height}x{width} "
                                                      f"would take {decoded / 2**30:,.1f} GiB to decode (at most "
                                                      f"{MAX_DECODED_BYTES / 2**30:g} GiB): is the shape right?")
    mode = "L" if channels == 1 else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in files[name]:
            xs.append(_read_image(f, mode, (width, height), path) / 255.0)
            ys.append(label)
    if not xs:
        raise ConfigError("data.source", f"no images found under {path}")
    return _Arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), labels=classes,
                   preprocessing=f"image folder; {mode} resized to {height}x{width}; pixel / 255 -> [0, 1]")


SOURCES: dict[str, Callable[..., _Arrays]] = {"digits": _digits, "mnist1d": _mnist1d}


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, field: str,
           what: str) -> tuple[list[np.ndarray], bool]:
    """Split off ``fraction`` of the samples, stratified when every class has two samples or more.

    Returns:
        ``[x_rest, x_part, y_rest, y_part]`` and whether the split was stratified.
    Raises:
        ConfigError naming ``field`` when a part would be empty or, stratified, hold fewer samples than classes.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_part, n_rest = math.ceil(fraction * n), math.floor((1.0 - fraction) * n)  # as scikit-learn rounds
    counts = np.bincount(y)
    classes = int((counts > 0).sum())
    stratified = bool(counts[counts > 0].min() >= 2)
    need = classes if stratified else 1
    if n_part < need or n_rest < need:
        raise ConfigError(field, f"{what} of {fraction:g} of {n} samples holds {n_part} (the rest {n_rest}); "
                                 f"each needs at least {need} ({'one per class' if stratified else 'one'})")
    parts = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y if stratified else None)
    return parts, stratified


def unnamed_labels(num_classes: int) -> list[str]:
    """The names of classes a source does not name: their indices, as strings."""
    return [str(i) for i in range(num_classes)]


def load_splits(data: Any, *, base_dir: str | Path = ".", input_shape: tuple[int, ...] | None = None) -> Splits:
    """Load ``data.source`` and split it into train / val / test, seeded and stratified.

    Args:
        data: a :class:`~torchslim.domain.DataSpec`.
        base_dir: folder that ``npz:`` and ``imagefolder:`` paths resolve against.
        input_shape: the model's per-sample input shape, used to resize images and add a channel axis.
    Returns:
        the three splits; ``info`` records sizes, seed and preprocessing for the outputs.
    """
    kind, _, arg = data.source.partition(":")
    if kind in SOURCES and not arg:
        arrays = SOURCES[kind]()
    elif kind in ("npz", "imagefolder") and arg:
        path = Path(arg)
        try:
            path = path.expanduser()
        except RuntimeError:  # ~user of an unknown user: the path stays as written
            pass
        path = path if path.is_absolute() else Path(base_dir) / path
        arrays = _npz(path, input_shape) if kind == "npz" else _imagefolder(path, input_shape)
    else:
        known = ", ".join([*SOURCES, "npz:PATH", "imagefolder:PATH"])
        raise ConfigError("data.source", f"unknown data source {brief(data.source)}; "
                                         f"{did_you_mean(data.source, [*SOURCES, 'npz:', 'imagefolder:'])}known: {known}")
    for name, arr in (("x", arrays.x), ("x_test", arrays.x_test)):
        if arr is not None and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr.reshape(len(arr), -1))
            n = int(bad.sum())
            raise ConfigError("data.source", f"{brief(data.source)}: array {name} contains NaN or Inf ({n:,} "
                                             f"value{'s' if n > 1 else ''}, the first in sample "
                                             f"{int(np.argmax(bad.any(1)))}): impute or drop them first")
    if arrays.y.min() < 0:
        raise ConfigError("data.source", "labels must be integers >= 0")
    if len(np.unique(arrays.y)) < 2:  # accuracy would be 100 % whatever the model does
        raise ConfigError("data.source", f"every label is {int(arrays.y[0])}: a classifier needs "
                                         f"at least two classes")
    if arrays.y_test is not None and not set(np.unique(arrays.y_test).tolist()) <= set(np.unique(arrays.y).tolist()):
        unseen = sorted(set(np.unique(arrays.y_test).tolist()) - set(np.unique(arrays.y).tolist()))
        raise ConfigError("data.source", f"y_test has label(s) {unseen[:10]} that no training sample has: no model "
                                         f"trained on these data can get them right")

    stratified = True
    if arrays.x_test is None:
        (x_rest, x_test, y_rest, y_test), stratified = _split(arrays.x, arrays.y, data.test_fraction, data.seed,
                                                              "data.test_fraction", "the test split")
        val_of_rest = data.val_fraction / (1.0 - data.test_fraction)
    else:
        x_rest, y_rest, x_test, y_test = arrays.x, arrays.y, arrays.x_test, arrays.y_test
        val_of_rest = data.val_fraction
    (x_train, x_val, y_train, y_val), val_stratified = _split(x_rest, y_rest, val_of_rest, data.seed,
                                                              "data.val_fraction", "the validation split")

    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    labels = arrays.labels or unnamed_labels(num_classes)

    def ds(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    info = {"source": data.source, "seed": data.seed, "train": len(y_train), "val": len(y_val),
            "test": len(y_test), "test_fraction": data.test_fraction if arrays.x_test is None else None,
            "val_fraction": data.val_fraction, "preprocessing": arrays.preprocessing,
            # False when a class has a single sample, which no stratified split can place in both parts
            "stratified": stratified and val_stratified}
    splits = Splits(ds(x_train, y_train), ds(x_val, y_val), ds(x_test, y_test), num_classes, labels, info)
    return splits if data.fold is None else fold_splits(splits, data.fold.index, data.fold.of, data.seed)


def fold_splits(splits: Splits, index: int, of: int, seed: int) -> Splits:
    """The ``index``-th of ``of`` cross-validation parts of ``splits``: its training and validation samples pooled
    and cut into ``of`` parts (seeded; stratified when every class has ``of`` samples or more), that part the
    validation split and the others the training split; the test split as it was, so no decision ever sees it.

    Raises:
        ConfigError naming ``data.fold.of`` when there are fewer pooled samples than parts.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    x = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    y = torch.cat([splits.train.tensors[1], splits.val.tensors[1]])
    if of > len(y):
        raise ConfigError("data.fold.of", f"{of} parts of {len(y)} training and validation samples: at most "
                                          f"{len(y)}")
    counts = np.bincount(y.numpy())
    stratified = bool(counts[counts > 0].min() >= of)
    cut = (StratifiedKFold if stratified else KFold)(n_splits=of, shuffle=True, random_state=seed)
    train_idx, val_idx = list(cut.split(np.zeros(len(y)), y.numpy()))[index]
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    info = {**splits.info, "train": len(train_idx), "val": len(val_idx), "fold": {"index": index, "of": of},
            "stratified": splits.info.get("stratified", True) and stratified}
    return Splits(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]), splits.test,
                  splits.num_classes, splits.labels, info)
