"""k-means weight sharing (Deep Compression): 1-D k-means, linear initialisation, fixed zero entry."""

from __future__ import annotations

import torch

from torchslim.quantize.primitives import check_bits, check_finite


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, centroids initialised evenly between min and max (deterministic).

    Args:
        values: (N,) float values.
        k: number of centroids.
        iterations: maximum Lloyd iterations (stops early when assignments settle).
    Returns:
        (centroids (k,) sorted ascending, assignment (N,) long).
    """
    values = values.detach().float().reshape(-1)
    centroids = torch.linspace(float(values.min()), float(values.max()), k, device=values.device)  # (k,)
    assign = None
    for _ in range(iterations):
        # 1-D nearest centroid: bucketize against midpoints of sorted centroids, O(N log k) memory-light
        centroids, _ = torch.sort(centroids)
        new_assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)  # (N,)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros(k, device=values.device).index_add_(0, assign, values)
        counts = torch.bincount(assign, minlength=k).float()
        # empty clusters keep their previous centroid
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    centroids, _ = torch.sort(centroids)
    assign = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, assign


def cluster_weight(weight: torch.Tensor, bits: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the nonzero weights into 2^bits - 1 centroids; exact zeros get index 0 (value 0).

    Args:
        weight: float tensor of any shape.
        bits: 2..8; the codebook has 2^bits entries, entry 0 fixed at 0.
    Returns:
        (centroids (2^bits - 1,), indices uint8 shaped like weight, values in [0, 2^bits - 1]).
    """
    check_bits(bits)
    check_finite(weight, "weight")
    free = 2 ** bits - 1
    flat = weight.detach().reshape(-1).float()
    nonzero = flat != 0
    indices = torch.zeros_like(flat, dtype=torch.long)
    if not bool(nonzero.any()):
        return torch.zeros(free, device=weight.device), indices.to(torch.uint8).reshape(weight.shape)
    centroids, assign = kmeans_1d(flat[nonzero], free, iterations)
    indices[nonzero] = assign + 1
    return centroids, indices.to(torch.uint8).reshape(weight.shape)
