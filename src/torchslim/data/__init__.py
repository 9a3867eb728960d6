"""Dataset sources (digits, mnist1d, npz, image folder) and seeded, stratified splits."""

from torchslim.data._sources import SOURCES, Splits, fold_splits, load_splits

__all__ = ["SOURCES", "Splits", "fold_splits", "load_splits"]
