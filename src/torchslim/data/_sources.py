"""Each source returns arrays; splitting is shared so every source is split the same seeded, stratified way."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from torchslim._errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


def _npz(path: Path, input_shape: tuple[int, ...] | None) -> _Arrays:
    if not path.is_file():
        raise ConfigError("data.source", f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ConfigError("data.source", f"cannot read {path} as npz: {exc}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ConfigError("data.source", f"{path.name} has no array {key!r} (found: {', '.join(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ConfigError("data.source", f"{path.name} must have both x_test and y_test, or neither")

    def fit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        # A single-channel model accepts (N, H, W) / (N, L) arrays by adding the channel axis.
        if input_shape is not None and x.shape[1:] != input_shape and x.shape[1:] == input_shape[1:] \
                and input_shape[0] == 1:
            x = x[:, None]
        return x

    return _Arrays(fit(arrays["x"]), arrays["y"].astype(np.int64),
                   fit(arrays["x_test"]) if "x_test" in arrays else None,
                   arrays["y_test"].astype(np.int64) if "y_test" in arrays else None,
                   preprocessing=f"npz {path.name}; float32 as stored")


def _imagefolder(path: Path, input_shape: tuple[int, ...] | None) -> _Arrays:
    from PIL import Image

    if not path.is_dir():
        raise ConfigError("data.source", f"image folder not found: {path}")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ConfigError("data.source", f"{path} must hold one sub-folder per class (found {len(classes)})")
    if input_shape is None or len(input_shape) != 3:
        raise ConfigError("model", "an image folder needs a model that declares an input shape (C, H, W)")
    channels, height, width = input_shape
    mode = "L" if channels == 1 else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(f) as img:
                arr = np.asarray(img.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
            xs.append(arr / 255.0)
            ys.append(label)
    if not xs:
        raise ConfigError("data.source", f"no images found under {path}")
    return _Arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), labels=classes,
                   preprocessing=f"image folder; {mode} resized to {height}x{width}; pixel / 255 -> [0, 1]")


SOURCES: dict[str, Callable[..., _Arrays]] = {"digits": _digits, "mnist1d": _mnist1d}


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)


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
        path = Path(arg).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        arrays = _npz(path, input_shape) if kind == "npz" else _imagefolder(path, input_shape)
    else:
        known = ", ".join([*SOURCES, "npz:PATH", "imagefolder:PATH"])
        raise ConfigError("data.source", f"unknown data source {data.source!r}; known: {known}")
    for name, arr in (("x", arrays.x), ("x_test", arrays.x_test)):
        if arr is not None and not np.isfinite(arr).all():
            raise ConfigError("data.source", f"array {name} contains NaN or Inf")
    if arrays.y.min() < 0:
        raise ConfigError("data.source", "labels must be integers >= 0")

    if arrays.x_test is None:
        x_rest, x_test, y_rest, y_test = _split(arrays.x, arrays.y, data.test_fraction, data.seed)
        val_of_rest = data.val_fraction / (1.0 - data.test_fraction)
    else:
        x_rest, y_rest, x_test, y_test = arrays.x, arrays.y, arrays.x_test, arrays.y_test
        val_of_rest = data.val_fraction
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, val_of_rest, data.seed)

    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    labels = arrays.labels or unnamed_labels(num_classes)

    def ds(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    info = {"source": data.source, "seed": data.seed, "train": len(y_train), "val": len(y_val),
            "test": len(y_test), "test_fraction": data.test_fraction if arrays.x_test is None else None,
            "val_fraction": data.val_fraction, "preprocessing": arrays.preprocessing, "stratified": True}
    return Splits(ds(x_train, y_train), ds(x_val, y_val), ds(x_test, y_test), num_classes, labels, info)
