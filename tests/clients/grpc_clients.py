"""The Open Inference Protocol's Python gRPC clients against `sisa serve --grpc-addr`.

Usage: python3 grpc_clients.py CLIENT HOST:PORT MODEL ROWS.json

CLIENT is `tritonclient` (tritonclient.grpc; `tritonclient-gzip` and `tritonclient-deflate`
compress the request), `kserve` (KServe's InferenceGRPCClient with a
NumPy array, sent as raw bytes) or `kserve-contents` (the same with the values as a list, sent in
contents.fp32_contents). One client a process: both packages register their own copy of the
`inference` protobuf package, and Python refuses to load the two into one process.

ROWS.json holds the rows to predict, a list of lists of numbers. The client makes its default
calls (health, metadata, then infer with the one input and no outputs named), and the script
prints one JSON document on stdout: the labels, the probabilities and the model version it read.
tests/grpc.rs compares them with `sisa predict --json` on the same rows.
"""

import asyncio
import json
import sys

import numpy as np


def with_tritonclient(addr, model, x, compression=None):
    """tritonclient.grpc, exactly as its documentation shows a call (with `compression`,
    "gzip" or "deflate", the request message compressed)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=addr)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model)
    assert [i.name for i in meta.inputs] == ["input"], meta
    # Triton's own calls are refused, naming the call.
    try:
        client.get_model_config(model)
    except InferenceServerException as e:
        assert e.status() == "StatusCode.UNIMPLEMENTED", e
        assert "ModelConfig is not served" in e.message(), e
    else:
        raise AssertionError("ModelConfig answered")
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], compression_algorithm=compression)
    answer = {
        "label": result.as_numpy("label").tolist(),
        "probabilities": result.as_numpy("probabilities").tolist(),
        "model_version": result.get_response().model_version,
    }
    client.close()
    return answer


async def with_kserve(addr, model, x, as_list):
    """KServe's InferenceGRPCClient with its default infer: the NumPy array as raw bytes, or
    (as_list) the values as a list, which it sends in contents.fp32_contents."""
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    client = InferenceGRPCClient(addr)
    assert await client.is_server_live()
    assert await client.is_server_ready()
    assert await client.is_model_ready(model)
    if as_list:
        inp = InferInput("input", list(x.shape), "FP32", data=x.flatten().tolist())
    else:
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
    response = await client.infer(InferRequest(model_name=model, infer_inputs=[inp]))
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    await client.close()
    return {
        "label": outputs["label"].tolist(),
        "probabilities": outputs["probabilities"].tolist(),
        "model_version": response.model_version,
    }


def main():
    client, addr, model, rows = sys.argv[1:5]
    with open(rows) as f:
        x = np.array(json.load(f), dtype=np.float32)
    if client == "tritonclient":
        answer = with_tritonclient(addr, model, x)
    elif client in ("tritonclient-gzip", "tritonclient-deflate"):
        answer = with_tritonclient(addr, model, x, compression=client.split("-")[1])
    elif client in ("kserve", "kserve-contents"):
        answer = asyncio.run(with_kserve(addr, model, x, as_list=client == "kserve-contents"))
    else:
        sys.exit(
            f"unknown client {client!r}: tritonclient, tritonclient-gzip, tritonclient-deflate, "
            "kserve or kserve-contents"
        )
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
