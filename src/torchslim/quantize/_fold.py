"""Fold eval-mode BatchNorm into the preceding convolution (before quantizing, as int8 kernels expect)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from torchslim.quantize._select import set_submodule

_CONVS = (nn.Conv1d, nn.Conv2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


class FoldedBatchNorm(nn.Identity):
    """Where a BatchNorm was: its statistics and affine now live in the convolution ``into``.

    An artifact records these (``structure.folded_batchnorm``) so a freshly built model, which has the BatchNorm
    again, is given the folded shape (BatchNorm gone, a bias on the convolution) before the tensors are loaded.
    """

    def __init__(self, into: str):
        super().__init__()
        self.into = into

    def extra_repr(self) -> str:
        return f"into={self.into}"


def folded_batchnorms(model: nn.Module) -> dict[str, str]:
    """{BatchNorm name: convolution name} of every BatchNorm folded away in ``model``."""
    return {name: m.into for name, m in model.named_modules() if isinstance(m, FoldedBatchNorm)}


def refold_(model: nn.Module, folded: dict[str, str]) -> None:
    """Give a freshly built ``model`` the shape of one whose BatchNorms ``folded`` were folded: each becomes a
    :class:`FoldedBatchNorm` and its convolution gets a (zero) bias; the stored tensors are loaded next."""
    for bn_name, conv_name in folded.items():
        conv = model.get_submodule(conv_name)
        if not isinstance(conv, _CONVS) or not isinstance(model.get_submodule(bn_name), _BNS):
            raise ValueError(f"{bn_name} folded into {conv_name}: not a BatchNorm after a Conv in the built model")
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
        set_submodule(model, bn_name, FoldedBatchNorm(conv_name))


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the conv's only consumer is the bn (traced with torch.fx)."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), _CONVS)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) pairs adjacent inside nn.Sequential containers (when the model cannot be traced)."""
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, ma), (b, mb) in zip(children, children[1:]):
                if isinstance(ma, _CONVS) and isinstance(mb, _BNS):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def fold_conv_bn_(model: nn.Module) -> list[str]:
    """Fold every Conv→BatchNorm pair of ``model`` in place; model is set to eval.

    Returns:
        Names of the convolutions that absorbed a BatchNorm (each BatchNorm becomes a :class:`FoldedBatchNorm`).
    """
    model.eval()
    try:
        pairs = _pairs_fx(model)
    except Exception:  # data-dependent control flow: fall back to Sequential adjacency
        pairs = _pairs_sequential(model)
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None:  # batch statistics: nothing fixed to fold
            continue
        set_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        set_submodule(model, bn_name, FoldedBatchNorm(conv_name))
        folded.append(conv_name)
    return folded
