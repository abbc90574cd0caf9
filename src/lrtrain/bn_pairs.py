"""Which BatchNorm normalizes which conv's output, read from the model's dataflow.

LRPET's BN rectification and BN folding need, for each conv, the BatchNorm (`is_batchnorm`: BatchNorm2d,
SyncBatchNorm, torchvision's FrozenBatchNorm2d) that consumes its output.
Module order is not enough (torchvision registers a block's ``downsample`` after its last BN, and a
model may call modules in any order), so the pairing is read from the forward pass itself:

1. `torch.fx` symbolic tracing: a conv is paired with a BN when the BN is the *only* consumer of the
   conv's output (a conv whose output also goes elsewhere is not paired: folding a BN's scale into it
   would be wrong for the other use);
2. when the model cannot be traced symbolically (data-dependent control flow), one real forward pass
   with hooks: a BN is paired with the conv whose output tensor it receives unchanged (same tensor, no
   in-place op in between) and, where autograd can follow the pass, when no other node of the autograd
   graph consumes that tensor. This fallback cannot see a use that leaves no trace in the graph (a branch
   taken on the conv's output, a non-differentiable op): `find_pairs` says when it was used, and
   `fold.fold_batchnorm` then checks the folded model's outputs.

Either way a BN called more than once in a forward pass (shared by two convs, or also applied to another
tensor) is paired with nothing.
"""

from __future__ import annotations

import logging

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .metrics import _inference  # eval mode, no_grad, a zero input; the model's modes restored

log = logging.getLogger("lrtrain")


def is_batchnorm(m: nn.Module) -> bool:
    """A per-channel BatchNorm of N×C×H×W tensors: ``nn.BatchNorm2d``, ``nn.SyncBatchNorm`` (the DDP form of
    any of them), torchvision's ``FrozenBatchNorm2d`` (its detection models' and fine-tuning recipes')."""
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
        return False
    return isinstance(m, _BatchNorm) or (type(m).__name__ == "FrozenBatchNorm2d"
                                         and type(m).__module__.startswith("torchvision"))


def conv_bn_pairs(model: nn.Module, input_size=(1, 3, 32, 32)) -> dict[str, str]:
    """``{conv name: BN name}`` for every ``nn.Conv2d`` whose output goes straight into a ``BatchNorm2d``.

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> conv_bn_pairs(net)
        {'0': '1'}

    `input_size` is used only when the model cannot be traced with torch.fx and a real forward pass
    (in eval mode, on zeros) is needed instead.
    """
    return find_pairs(model, input_size)[0]


def find_pairs(model: nn.Module, input_size=(1, 3, 32, 32)) -> tuple[dict[str, str], bool]:
    """`conv_bn_pairs`, and whether torch.fx traced the model (False: a forward pass paired it, which can
    miss a use of a conv's output, see the module's docstring)."""
    try:
        graph = _ConvLeafTracer().trace(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable Python control flow
        log.info("conv_bn_pairs: torch.fx cannot trace %s (%s); pairing from a forward pass",
                 type(model).__name__, err)
        return _pairs_from_forward(model, input_size), False
    return _pairs_from_graph(model, graph), True


class _ConvLeafTracer(fx.Tracer):
    """Every nn.Conv2d is one call_module node, subclasses (lrtrain's PointwiseConv2d) included."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or is_batchnorm(m) or super().is_leaf_module(m, qualname)


def _pairs_from_graph(model: nn.Module, graph: fx.Graph) -> dict[str, str]:
    modules = dict(model.named_modules())
    found: dict[str, set[str | None]] = {}  # every call of a conv, and the BN it fed (None: not only a BN)
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        bn = None
        if len(users) == 1 and users[0].op == "call_module" and users[0].args[:1] == (node,) \
                and is_batchnorm(modules.get(users[0].target)):
            bn = users[0].target
        found.setdefault(node.target, set()).add(bn)
    bn_calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and is_batchnorm(modules.get(node.target)):
            bn_calls[node.target] = bn_calls.get(node.target, 0) + 1
    # A conv called more than once is paired only when every call feeds the same BN; a BN called more than
    # once (shared, or also normalizing another tensor) is never paired: folding it would change its other calls.
    return {conv: next(iter(bns)) for conv, bns in found.items()
            if len(bns) == 1 and None not in bns and bn_calls[next(iter(bns))] == 1}


def _pairs_from_forward(model: nn.Module, input_size) -> dict[str, str]:
    try:  # autograd on (the input requires grad): the graph then names the other consumers of a conv's output
        return _forward_pass_pairs(model, input_size, autograd=True)
    except Exception:  # a model autograd cannot follow (in-place ops on its input, .numpy(), inference tensors)
        return _forward_pass_pairs(model, input_size, autograd=False)


def _forward_pass_pairs(model: nn.Module, input_size, autograd: bool) -> dict[str, str]:
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # id(output) -> (conv, output, its version)
    calls: dict[str, list[object]] = {}  # conv -> the autograd node of each of its outputs
    bn_calls: dict[str, int] = {}
    fed: dict[str, list[str]] = {}  # conv -> the BN each of its outputs went into

    def on_conv(name):
        def hook(module, args, out):
            # Keeping `out` alive keeps its id from being reused by another tensor during the pass.
            outputs[id(out)] = (name, out, out._version)
            calls.setdefault(name, []).append(out.grad_fn)
        return hook

    def on_bn(name):
        def hook(module, args):
            x = args[0]
            bn_calls[name] = bn_calls.get(name, 0) + 1
            entry = outputs.get(id(x))
            if entry is not None and entry[1] is x and entry[2] == x._version:
                fed.setdefault(entry[0], []).append(name)
        return hook

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv(name)))
        elif is_batchnorm(m):
            handles.append(m.register_forward_pre_hook(on_bn(name)))
    try:
        with _inference(model, input_size) as x, torch.set_grad_enabled(autograd):
            out = model(x.requires_grad_() if autograd else x)
            uses = _consumers(out) if autograd else None
    finally:
        for h in handles:
            h.remove()

    def alone(node) -> bool:  # the conv output's only consumer is its BN (unknown without autograd)
        return uses is None or (node is not None and uses.get(node, 0) == 1)

    # A conv called more than once is paired only when every call fed the same BN and nothing else, a BN
    # only if called once.
    return {conv: bns[0] for conv, bns in fed.items()
            if len(bns) == len(calls[conv]) and len(set(bns)) == 1 and bn_calls[bns[0]] == 1
            and all(alone(node) for node in calls[conv])}


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, or tensors nested in tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    return [t for item in items for t in output_tensors(item)]


def _consumers(out) -> dict[object, int]:
    """How many autograd nodes (and returned tensors) consume the output of each node of the graph
    behind `out` (`output_tensors`)."""
    counts: dict[object, int] = {}
    stack = [t.grad_fn for t in output_tensors(out) if t.grad_fn is not None]
    for node in stack:
        counts[node] = counts.get(node, 0) + 1
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] = counts.get(child, 0) + 1
                stack.append(child)
    return counts
