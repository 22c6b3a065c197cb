"""Generated protobuf and gRPC code for the Open Inference Protocol (proto package ``inference``). Do not edit: run scripts/gen_protos.py."""
