"""Generated protobuf and gRPC code for ``preimage.v1``. Do not edit: run scripts/gen_protos.py."""
