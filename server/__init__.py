"""The preimage gRPC server: transport over the engine and the registry.

Importing this package is cheap; ``preimage.server.app`` builds and runs a server.
"""

from __future__ import annotations

__all__: list[str] = []
