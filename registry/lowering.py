"""Lower a converted module's simple layers to plain torch calls, for less Python per forward pass.

onnx2torch builds a :class:`torch.fx.GraphModule` whose every ONNX node is a submodule call:
a 10 → 64 → 64 → 1 network is eight ``nn.Module.__call__`` round trips (hooks, dispatch,
attribute look-ups) around eight small kernels. For the many small passes of an Invert
(tens of rows each) that Python costs as much as the arithmetic: 0.11 ms a pass against
0.05 ms for the same kernels called directly.

:func:`lower` rewrites the graph's ``call_module`` nodes of a few well-known layer types into
``call_function`` nodes that call exactly what those modules' ``forward`` calls, with the same
arguments and parameters (read through ``get_attr``): ``nn.Linear`` → ``F.linear``,
``nn.Sigmoid`` → ``torch.sigmoid``, onnx2torch's Add/Sub/Mul/Div → ``torch.add`` …, its Tanh,
Exp, Log … → ``torch.tanh`` …, and so on.
Every other node stays as it is. The same kernels run in the same order, so outputs and
input gradients keep their bits; :func:`lower` checks that on random rows (when it can tell
the input width) and returns the module unchanged when they differ or the rewrite fails.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["lower"]

_log = logging.getLogger(__name__)

_CHECK_ROWS = (1, 7, 64)

_Call = tuple[Callable[..., Any], tuple[str, ...], dict[str, Any]]
"""What a rule lowers a layer to: the function, the layer's parameters passed after the inputs, keyword arguments."""
_Rule = Callable[[nn.Module], "_Call | None"]


def _linear(module: nn.Module) -> _Call | None:
    return (F.linear, ("weight", "bias") if module.bias is not None else ("weight",), {})


def _plain(function: Callable[..., Any]) -> _Rule:
    return lambda module: (function, (), {})


def _leaky_relu(module: nn.Module) -> _Call | None:
    return None if module.inplace else (F.leaky_relu, (), {"negative_slope": module.negative_slope})


def _elu(module: nn.Module) -> _Call | None:
    return None if module.inplace else (F.elu, (), {"alpha": module.alpha})


def _softplus(module: nn.Module) -> _Call | None:
    return (F.softplus, (), {"beta": module.beta, "threshold": module.threshold})


def _gelu(module: nn.Module) -> _Call | None:
    return (F.gelu, (), {"approximate": module.approximate})


def _relu(module: nn.Module) -> _Call | None:
    return None if module.inplace else (torch.relu, (), {})


def _silu(module: nn.Module) -> _Call | None:
    return None if module.inplace else (F.silu, (), {})


def _binary(module: nn.Module) -> _Call | None:
    # onnx2torch's Add/Sub/Mul/Div: ``math_op_function(a, b)`` unless old-style (opset < 7) broadcasting.
    if getattr(module, "broadcast", None) == 1 and getattr(module, "axis", None) is not None:
        return None
    function = getattr(module, "math_op_function", None)
    return (function, (), {}) if callable(function) else None


# Exact types only: a subclass may override forward.
_RULES: dict[type, _Rule] = {
    nn.Linear: _linear,
    nn.Sigmoid: _plain(torch.sigmoid),
    nn.Tanh: _plain(torch.tanh),
    nn.ReLU: _relu,
    nn.SiLU: _silu,
    nn.GELU: _gelu,
    nn.LeakyReLU: _leaky_relu,
    nn.ELU: _elu,
    nn.Softplus: _softplus,
}


def _function(module: nn.Module) -> _Call | None:
    # onnx2torch's unary elementwise ops (Tanh, Exp, Log, Abs, Sin, ...): ``function(x)``.
    function = getattr(module, "function", None)
    return (function, (), {}) if callable(function) else None


def _onnx2torch_rules() -> dict[type, _Rule]:
    """Rules for onnx2torch's own wrappers whose forward is one torch call."""
    rules: dict[type, _Rule] = {}
    try:
        from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    except ImportError:  # another onnx2torch layout: those nodes stay submodule calls
        pass
    else:
        rules[OnnxBinaryMathOperation] = _binary
    try:
        from onnx2torch.node_converters.functions import OnnxFunction
    except ImportError:
        pass
    else:
        rules[OnnxFunction] = _function
    return rules


def lower(module: nn.Module, width: int | None = None) -> nn.Module:
    """A copy of ``module`` with its simple layers called as functions, or ``module`` itself.

    Args:
        module: A frozen module; only a :class:`torch.fx.GraphModule` (what onnx2torch returns) is rewritten.
        width: Input columns, to check the rewrite on random rows; read from the first
            ``nn.Linear`` when ``None``, and unchecked when it cannot be known.

    Returns:
        The lowered module (eval mode, no parameter gradients), or ``module`` when nothing was
        lowered or the check found a difference.
    """
    if not isinstance(module, fx.GraphModule):
        return module
    rules = {**_RULES, **_onnx2torch_rules()}
    try:
        lowered = _rewrite(module, rules)
    except Exception as exc:  # never fail a registration over an optimization
        _log.debug("lowering skipped: %s: %s", type(exc).__name__, exc)
        return module
    if lowered is None:
        return module
    if width is None:
        width = _first_linear_width(module)
    if width is not None and not _same_bits(module, lowered, width):
        _log.info("lowering changed output bits; serving the module as converted")
        return module
    return lowered


def _rewrite(module: fx.GraphModule, rules: dict[type, _Rule]) -> fx.GraphModule | None:
    graph = copy.deepcopy(module.graph)
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        child = module.get_submodule(str(node.target))
        rule = rules.get(type(child))
        if rule is None or node.kwargs:
            continue
        found = rule(child)
        if found is None:
            continue
        function, parameters, kwargs = found
        with graph.inserting_before(node):
            attributes = tuple(graph.get_attr(f"{node.target}.{name}") for name in parameters)
            call = graph.call_function(function, args=(*node.args, *attributes), kwargs=kwargs)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        changed += 1
    if changed == 0:
        return None
    graph.lint()
    lowered = fx.GraphModule(module, graph, class_name=type(module).__name__)
    lowered.eval()
    lowered.requires_grad_(False)
    return lowered


def _first_linear_width(module: nn.Module) -> int | None:
    for child in module.modules():
        if isinstance(child, nn.Linear):
            return int(child.in_features)
    return None


def _same_bits(original: nn.Module, lowered: nn.Module, width: int) -> bool:
    """Outputs and input gradients of both modules agree bit for bit on random rows."""
    generator = torch.Generator().manual_seed(0)
    try:
        for rows in _CHECK_ROWS:
            X = torch.randn(rows, width, generator=generator)
            results = []
            for candidate in (original, lowered):
                inputs = X.clone().requires_grad_(True)
                output = candidate(inputs)
                output = output[0] if isinstance(output, (tuple, list)) else output
                (gradient,) = torch.autograd.grad(output.sum(), inputs, allow_unused=True)
                results.append((output.detach(), gradient))
            (a, ga), (b, gb) = results
            if not torch.equal(a, b):
                return False
            if (ga is None) != (gb is None) or (ga is not None and gb is not None and not torch.equal(ga, gb)):
                return False
    except Exception:
        return False  # the original fails on these rows too, or the rewrite broke something
    return True
