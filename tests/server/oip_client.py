"""Drive a server with an unmodified ``tritonclient[grpc]``, as a user would; run under .venv-oip.

tritonclient needs protobuf<7 and preimage pins protobuf 7, so this script runs
in its own virtual environment (scripts/install.sh builds ``.venv-oip``) as a
subprocess of the tests. It imports nothing of preimage. It reads a plan from
stdin and prints one JSON object: for each call id, ``{"ok": true, "result": ...}``
or ``{"ok": false, "code": "NOT_FOUND", "message": ...}``.

Plan::

    {"url": "127.0.0.1:PORT", "root_certificates": null | "ca.pem", "token": null | "secret",
     "calls": [{"id": "a", "op": "infer", "model": "m", "version": "", "rows": [[...], ...]}, ...]}

Ops: ``live``, ``ready``, ``model_ready``, ``server_metadata``, ``model_metadata``,
``repository_index`` and ``unload`` (Triton extensions preimage does not serve),
``infer`` (tritonclient's ``infer``: raw tensor contents) and ``infer_typed`` (a
``ModelInferRequest`` with ``contents.fp32_contents`` through the ``service_pb2``
stub tritonclient ships). ``infer`` options: ``rows`` or ``random`` (``[n, d, seed]``),
``datatype``, ``shape``, ``input_name``, ``outputs`` (names to request), ``request_id``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def _rows(call: dict[str, Any]) -> np.ndarray:
    if "random" in call:
        n, d, seed = call["random"]
        return np.random.default_rng(seed).random((n, d), dtype=np.float32)
    return np.asarray(call["rows"], dtype=np.float32)


def _infer(client: triton.InferenceServerClient, call: dict[str, Any], headers: dict[str, str]) -> Any:
    X = _rows(call)
    datatype = call.get("datatype", "FP32")
    tensor = triton.InferInput(call.get("input_name", "input"), call.get("shape", list(X.shape)), datatype)
    tensor.set_data_from_numpy(X.astype(triton_to_np_dtype(datatype)))
    outputs = [triton.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
    result = client.infer(
        call["model"],
        [tensor],
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("request_id", ""),
        headers=headers,
    )
    response = result.get_response()
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in response.outputs],
        "raw": len(response.raw_output_contents) > 0,
        "values": result.as_numpy("output").tolist(),
    }


def _infer_typed(channel: grpc.Channel, call: dict[str, Any], metadata: list[tuple[str, str]]) -> Any:
    X = _rows(call)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=call["model"], model_version=call.get("version", ""))
    tensor = request.inputs.add(name=call.get("input_name", "input"), datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    response = stub.ModelInfer(request, metadata=metadata, timeout=30)
    output = response.outputs[0]
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)} for o in response.outputs],
        "raw": len(response.raw_output_contents) > 0,
        "values": np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape)).tolist(),
    }


def run(plan: dict[str, Any]) -> dict[str, Any]:
    ca = plan.get("root_certificates")
    token = plan.get("token")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client = triton.InferenceServerClient(plan["url"], ssl=ca is not None, root_certificates=ca)
    if ca is not None:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(plan["url"], grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(plan["url"])
    ops = {
        "live": lambda c: client.is_server_live(headers=headers),
        "ready": lambda c: client.is_server_ready(headers=headers),
        "model_ready": lambda c: client.is_model_ready(c["model"], c.get("version", ""), headers=headers),
        "server_metadata": lambda c: client.get_server_metadata(headers=headers, as_json=True),
        "model_metadata": lambda c: client.get_model_metadata(
            c["model"], c.get("version", ""), headers=headers, as_json=True
        ),
        "repository_index": lambda c: client.get_model_repository_index(headers=headers, as_json=True),
        "unload": lambda c: client.unload_model(c["model"], headers=headers),
        "infer": lambda c: _infer(client, c, headers),
        "infer_typed": lambda c: _infer_typed(channel, c, list(headers.items())),
    }
    results: dict[str, Any] = {}
    for call in plan["calls"]:
        try:
            results[call["id"]] = {"ok": True, "result": ops[call["op"]](call)}
        except InferenceServerException as exc:
            code = (exc.status() or "").removeprefix("StatusCode.")
            results[call["id"]] = {"ok": False, "code": code, "message": exc.message()}
        except grpc.RpcError as exc:
            results[call["id"]] = {"ok": False, "code": exc.code().name, "message": exc.details()}
    client.close()
    channel.close()
    return results


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
