"""Wire-compatible copies of the few standard gRPC messages the client reads.

The client installs with grpcio, protobuf and numpy only, so it cannot rely on
``googleapis-common-protos`` (``google.rpc``) or ``grpcio-health-checking``
(``grpc.health.v1``) being present. These messages are tiny and frozen, so the
client declares wire-compatible copies in a private descriptor pool: they never
clash with the real ones when those are installed, and one code path serves the
light and the full install alike.

Declared here:

- ``google.rpc.Status`` (the ``grpc-status-details-bin`` trailer), whose details
  are ``google.protobuf.Any`` (declared as the same two fields),
- ``google.rpc.BadRequest`` with its ``FieldViolation``s,
- ``google.rpc.RetryInfo`` with its ``google.protobuf.Duration``,
- ``grpc.health.v1.HealthCheckRequest`` / ``HealthCheckResponse`` (the enum is
  read as its varint, which is the same on the wire).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "BAD_REQUEST_TYPE",
    "HEALTH_CHECK_METHOD",
    "RETRY_INFO_TYPE",
    "STATUS_DETAILS_KEY",
    "BadRequest",
    "HealthCheckRequest",
    "HealthCheckResponse",
    "RetryInfo",
    "Status",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
BAD_REQUEST_TYPE = "google.rpc.BadRequest"
RETRY_INFO_TYPE = "google.rpc.RetryInfo"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "") -> _F:
    field = _F(
        name=name,
        number=number,
        type=kind,  # type: ignore[arg-type]
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    return field


def _build() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(name="preimage_client_wire.proto", syntax="proto3")
    # Package-less names keep this pool self-contained; only field numbers and
    # wire types matter for decoding.
    specs: dict[str, list[_F]] = {
        "AnyCopy": [
            _field("type_url", 1, _F.TYPE_STRING),
            _field("value", 2, _F.TYPE_BYTES),
        ],
        "StatusCopy": [
            _field("code", 1, _F.TYPE_INT32),
            _field("message", 2, _F.TYPE_STRING),
            _field("details", 3, _F.TYPE_MESSAGE, repeated=True, type_name=".AnyCopy"),
        ],
        "FieldViolationCopy": [
            _field("field", 1, _F.TYPE_STRING),
            _field("description", 2, _F.TYPE_STRING),
        ],
        "BadRequestCopy": [
            _field("field_violations", 1, _F.TYPE_MESSAGE, repeated=True, type_name=".FieldViolationCopy"),
        ],
        "DurationCopy": [
            _field("seconds", 1, _F.TYPE_INT64),
            _field("nanos", 2, _F.TYPE_INT32),
        ],
        "RetryInfoCopy": [
            _field("retry_delay", 1, _F.TYPE_MESSAGE, type_name=".DurationCopy"),
        ],
        "HealthCheckRequestCopy": [_field("service", 1, _F.TYPE_STRING)],
        "HealthCheckResponseCopy": [_field("status", 1, _F.TYPE_INT32)],
    }
    for name, fields in specs.items():
        proto.message_type.add(name=name, field=fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in specs}


_CLASSES = _build()

# Message classes built at run time; typed Any because no stubs describe them.
Status: Any = _CLASSES["StatusCopy"]
BadRequest: Any = _CLASSES["BadRequestCopy"]
RetryInfo: Any = _CLASSES["RetryInfoCopy"]
HealthCheckRequest: Any = _CLASSES["HealthCheckRequestCopy"]
HealthCheckResponse: Any = _CLASSES["HealthCheckResponseCopy"]
