"""Predict: rows in, outputs out, in one batched forward pass."""

from __future__ import annotations

import numpy as np
import torch

from preimage.errors import InvalidArgumentError
from preimage.server.engine.run import model_device, model_outputs

__all__ = ["checked_rows", "forward", "input_width", "predict"]


def input_width(module: torch.nn.Module) -> int | None:
    """The input width a module expects, when its graph says so (the first op is a ``Linear``).

    onnx2torch turns the usual first ``Gemm``/``MatMul`` of an exported network into a
    ``torch.nn.Linear`` (which the registry lowers to a ``F.linear`` call); for other graphs
    the width is unknown here (``None``).
    """
    graph = getattr(module, "graph", None)
    if graph is None:
        return module.in_features if isinstance(module, torch.nn.Linear) else None
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    users = list(placeholders[0].users)
    if len(users) != 1:
        return None
    user = users[0]
    if user.op == "call_module":
        first = module.get_submodule(str(user.target))
        if isinstance(first, torch.nn.Linear):
            return int(first.in_features)
    elif user.op == "call_function" and user.target is torch.nn.functional.linear and user.args[0] is placeholders[0]:
        weight = user.args[1]  # lowered (preimage.registry.lowering): a get_attr of the layer's weight
        if getattr(weight, "op", None) == "get_attr":
            return int(module.get_parameter(str(weight.target)).shape[1])
    return None


def predict(module: torch.nn.Module, X: np.ndarray, *, width: int | None = None) -> np.ndarray:
    """Evaluate a frozen model on a batch of rows.

    Args:
        module: The frozen model (eval mode, no parameter gradients), on any device.
        X: ``n x d`` rows (converted to float32).
        width: The input width ``d`` the model takes (``ModelRecord.input_width``); when
            ``None`` it is read from the module's graph where possible.

    Returns:
        ``n x m`` float32 outputs.

    Raises:
        InvalidArgumentError: ``X`` is not a 2-D matrix, has the wrong width, holds NaN or
            infinite values, or the model rejects it (field ``inputs``; the message gives
            the numbers).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1).eval()
        >>> predict(net, np.zeros((2, 3))).shape
        (2, 1)
    """
    return forward(module, checked_rows(module, X, width))


def checked_rows(module: torch.nn.Module, X: np.ndarray, width: int | None) -> np.ndarray:
    """``X`` as C-contiguous float32 rows of the model's width, or :class:`InvalidArgumentError` (field ``inputs``)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise InvalidArgumentError(f"inputs must be a matrix of rows, got shape {X.shape}", field="inputs")
    expected = width if width is not None else input_width(module)
    if expected is not None and X.shape[1] != expected:
        raise InvalidArgumentError(f"inputs have {X.shape[1]} columns but the model takes {expected}", field="inputs")
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            X32 = np.ascontiguousarray(X, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"inputs must be numbers, got dtype {X.dtype}", field="inputs") from None
    bad = ~np.isfinite(X32)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InvalidArgumentError(
            f"inputs hold {int(bad.sum())} NaN or infinite value(s) (after float32 conversion), "
            f"the first at row {row}, column {col}",
            field="inputs",
        )
    return X32


def forward(module: torch.nn.Module, X32: np.ndarray) -> np.ndarray:
    """One forward pass of checked float32 rows on the module's device; ``n x m`` float32 on the CPU."""
    try:
        with torch.no_grad():
            X = torch.from_numpy(X32).to(model_device(module))
            out = model_outputs(module(X), X32.shape[0]).cpu()
    except RuntimeError as exc:
        raise InvalidArgumentError(
            f"the model rejected inputs of {X32.shape[1]} columns: {str(exc).splitlines()[0]}", field="inputs"
        ) from None
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)
