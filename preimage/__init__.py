"""preimage: a gRPC inference server that answers "which inputs make this model output y?".

Subpackages (import only what you need; the client installs without torch):

- ``preimage.client``: typed Python client, async client and the ``preimage`` CLI.
- ``preimage.server``: the gRPC service (``preimage.server.engine`` is the plain-torch
  numerical core: predict, invert, train).
- ``preimage.registry``: ONNX model storage, validation and conversion to frozen torch modules.
- ``preimage.v1``: code generated from ``protos/preimage/v1`` (never hand-edited).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
