"""Export a trained torch module to self-contained ONNX bytes.

The maintained exporter (``torch.onnx.export(..., dynamo=True)``, which translates
through ``onnxscript``) produces a graph with one float32 input ``x`` of shape
``[batch, d]`` and one float32 output ``y`` of shape ``[batch, m]``, the batch
dimension dynamic, every weight inside the file. The feature schema is embedded as
JSON in ``metadata_props["preimage.schema"]``. Before the bytes are returned, the
ONNX reference evaluator runs them on example rows and must agree with the module.

The legacy TorchScript exporter is deprecated; it is kept only as a fallback for the
case where the dynamo path raises (it has not for any supported activation on the
pinned torch), and a warning is logged when it is used.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from preimage.registry.schema import FeatureSchema

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "SCHEMA_METADATA_KEY", "ExportError", "export_onnx"]

OPSET = 18
"""ONNX opset of exported models (supported by onnx2torch and onnxruntime)."""
INPUT_NAME = "x"
OUTPUT_NAME = "y"
SCHEMA_METADATA_KEY = "preimage.schema"

_log = logging.getLogger(__name__)
# torch.export traces through process-wide state (dynamo caches, fake-tensor modes);
# exports from concurrent Train calls take turns.
_EXPORT_LOCK = threading.Lock()
_CHECK_ROWS = 64


class ExportError(RuntimeError):
    """The trained model could not be exported, or its export disagrees with it (a server fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"exporting the trained model to ONNX failed: {reason}")
        self.reason = reason


def export_onnx(
    module: torch.nn.Module,
    schema: FeatureSchema,
    example: np.ndarray | torch.Tensor,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> bytes:
    """Serialize ``module`` (``n x d`` float32 in, ``n x m`` float32 out) as ONNX bytes.

    Args:
        module: The model; put in eval mode.
        schema: Its feature schema, embedded as ``metadata_props["preimage.schema"]``.
        example: Typical input rows (at least one), used to trace and then to check the
            export against the module.
        rtol: Relative tolerance of the check.
        atol: Absolute tolerance of the check, scaled per output column by its largest magnitude
            (at least 1).

    Returns:
        The ONNX model, self-contained (no external data).

    Raises:
        ExportError: Both exporters failed, or the exported graph disagrees with the module.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        >>> schema = FeatureSchema.default(2, 1)
        >>> data = export_onnx(net, schema, np.zeros((4, 2), np.float32))
        >>> onnx.load_from_string(data).graph.input[0].name
        'x'
    """
    module.eval()
    X = torch.as_tensor(np.asarray(example, dtype=np.float32))
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"example must be n x d with n >= 1, got shape {tuple(X.shape)}")
    # Tracing with one row would specialize the batch dimension to 1.
    traced = X if X.shape[0] >= 2 else X.repeat(2, 1)
    with _EXPORT_LOCK:
        try:
            model = _export_dynamo(module, traced)
        except Exception as exc:
            _log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", exc)
            try:
                model = _export_legacy(module, traced)
            except Exception as legacy:
                raise ExportError(f"{type(legacy).__name__}: {legacy}") from legacy
    _check_signature(model, int(X.shape[1]))
    entry = model.metadata_props.add()
    entry.key = SCHEMA_METADATA_KEY
    entry.value = schema.to_json()
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_agrees(data, module, X[:_CHECK_ROWS], rtol=rtol, atol=atol)
    return data


def _export_dynamo(module: torch.nn.Module, X: torch.Tensor) -> onnx.ModelProto:
    program = torch.onnx.export(
        module,
        (X,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=OPSET,
        external_data=False,
        verbose=False,
        report=False,
    )
    if program is None:  # only when writing to a file, which this never asks for
        raise ExportError("the exporter returned no program")
    return program.model_proto


def _export_legacy(module: torch.nn.Module, X: torch.Tensor) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="preimage-export-") as folder:
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            (X,),
            path,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
        return onnx.load(path)


def _check_signature(model: onnx.ModelProto, width: int) -> None:
    """One float32 ``[batch, d]`` input and one float32 ``[batch, m]`` output, all weights inside."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    for value, expected_width in ((graph.input[0], width), (graph.output[0], None)):
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2 or dims[0].HasField("dim_value"):
            raise ExportError(f"{value.name!r} is not a float32 [batch, n] tensor with a dynamic batch")
        if expected_width is not None and dims[1].dim_value != expected_width:
            raise ExportError(f"input width {dims[1].dim_value}, expected {expected_width}")
    for initializer in graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"initializer {initializer.name!r} is stored outside the model")


def _check_agrees(data: bytes, module: torch.nn.Module, X: torch.Tensor, *, rtol: float, atol: float) -> None:
    """Evaluate the bytes with onnx's reference evaluator (independent of torch) and compare.

    The absolute tolerance is scaled per output column, so that a small column (a deep
    ensemble's spread beside its means) is checked at its own magnitude.
    """
    with torch.inference_mode():
        expected = module(X).numpy().astype(np.float64)
    (actual,) = ReferenceEvaluator(onnx.load_from_string(data)).run(None, {INPUT_NAME: X.numpy()})
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ExportError(f"the export outputs shape {actual.shape}, the module {expected.shape}")
    scale = np.maximum(1.0, np.abs(expected).max(axis=0, initial=0.0))
    deviation = np.abs(actual - expected)
    excess = deviation / (atol * scale + rtol * np.abs(expected))
    if not np.all(excess <= 1.0):  # NaN counts as a disagreement
        column = int(np.unravel_index(int(np.nanargmax(np.nan_to_num(excess, nan=np.inf))), excess.shape)[1])
        raise ExportError(
            f"the export disagrees with the trained module by up to {float(deviation[:, column].max()):g} "
            f"in output column {column}"
        )
