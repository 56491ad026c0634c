"""Drive a running `sisa serve` with real inference clients, called as their documentation
shows, and print what each call answered as one JSON document.

    python3 http_clients.py HOST:PORT MODEL ROWS.csv

ROWS.csv holds the rows to predict (the feature columns are chosen by the names the server's
model metadata gives). The clients are `tritonclient.http` (its default binary tensor data, no
outputs named; outputs named with binary_data True and False; JSON inputs; gzip and deflate
request compression; classification; request options) and kserve's `InferenceRESTClient`
(its default infer with binary inputs, JSON inputs, binary outputs). `tests/clients.rs` runs
this and compares every case with `sisa predict --json` on the same rows.

Each case prints `label` (n ints), `probabilities` (n rows, when asked for), `id` (the answer's)
and, for classification, `classes` (strings); a tritonclient case `binary` (the outputs the
answer held as binary data), a kserve case `binary_answer` (whether the answer had binary data)
and `content_encoding` (the answer's, as kserve's httpx asks for gzip by default).
"""

import asyncio
import csv
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def read_rows(path, features):
    """The rows of a CSV file as an FP32 array, keeping the `features` columns in order."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        at = [header.index(name) for name in features]
        return np.array([[row[i] for i in at] for row in reader], dtype=np.float32)


def triton_binary(result):
    """Names of the outputs tritonclient received as binary data."""
    return [
        o["name"]
        for o in result.get_response()["outputs"]
        if "binary_data_size" in o.get("parameters", {})
    ]


def triton_case(result, probabilities=True):
    case = {
        "label": result.as_numpy("label").tolist(),
        "binary": triton_binary(result),
        "id": result.get_response().get("id"),
    }
    if probabilities:
        case["probabilities"] = result.as_numpy("probabilities").tolist()
    return case


def tritonclient_cases(url, model, x):
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_ready()
    cases = {}

    def input_of(binary_data=True):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_data)
        return inp

    # The documented call: binary input data, no outputs named (binary_data_output: true).
    cases["triton_default"] = triton_case(client.infer(model, [input_of()]))
    cases["triton_json_input"] = triton_case(client.infer(model, [input_of(False)]))
    for name, label_binary, probs_binary in [
        ("triton_outputs_binary", True, True),
        ("triton_outputs_json", False, False),
        ("triton_outputs_mixed", True, False),
    ]:
        outputs = [
            httpclient.InferRequestedOutput("label", binary_data=label_binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=probs_binary),
        ]
        cases[name] = triton_case(client.infer(model, [input_of()], outputs=outputs))
    for algorithm in ["gzip", "deflate"]:
        result = client.infer(
            model,
            [input_of()],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        cases["triton_" + algorithm] = triton_case(result)
    # Classification: the 3 best classes as "probability:class" strings.
    result = client.infer(
        model,
        [input_of()],
        outputs=[
            httpclient.InferRequestedOutput("label"),
            httpclient.InferRequestedOutput("probabilities", class_count=3),
        ],
    )
    case = triton_case(result, probabilities=False)
    case["classes"] = [
        [s.decode() if isinstance(s, bytes) else s for s in row]
        for row in result.as_numpy("probabilities").tolist()
    ]
    cases["triton_classification"] = case
    # The options the client offers on every call, and one of the server's own parameters.
    result = client.infer(
        model,
        [input_of()],
        request_id="r-1",
        sequence_id=7,
        priority=1,
        timeout=10_000_000,
        parameters={"aggregation": "mean"},
    )
    cases["triton_options"] = triton_case(result)
    client.close()
    return cases


async def kserve_case(client, base_url, model, request):
    """Send `request` and read the answer; kserve drops `binary_data_size` from the outputs it
    decodes, so whether the answer held binary data is read from its headers."""
    headers = {}
    response = await client.infer(base_url, request, model_name=model, response_headers=headers)
    headers = {k.lower(): v for k, v in headers.items()}
    outputs = {o.name: o for o in response.outputs}
    return {
        "label": outputs["label"].as_numpy().tolist(),
        "probabilities": outputs["probabilities"].as_numpy().tolist(),
        "binary_answer": "inference-header-content-length" in headers,
        "content_encoding": headers.get("content-encoding"),
        "id": response.id,
    }


async def kserve_cases(base_url, model, x):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    cases = {}
    # The default: set_data_from_numpy sends binary data; the answer is JSON.
    inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x)
    request = InferRequest(model_name=model, infer_inputs=[inp], request_id="k-1")
    cases["kserve_default"] = await kserve_case(client, base_url, model, request)
    # Data given as a list goes as JSON.
    inp = InferInput(
        name="input", shape=list(x.shape), datatype="FP32", data=x.flatten().tolist()
    )
    request = InferRequest(model_name=model, infer_inputs=[inp])
    cases["kserve_json_input"] = await kserve_case(client, base_url, model, request)
    # Binary outputs, asked for by the request and by an output.
    inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x)
    request = InferRequest(
        model_name=model,
        infer_inputs=[inp],
        parameters={"binary_data_output": True},
        request_outputs=[
            RequestedOutput("label"),
            RequestedOutput("probabilities", parameters={"binary_data": True}),
        ],
    )
    cases["kserve_binary_output"] = await kserve_case(client, base_url, model, request)
    await client.close()
    return cases


def main():
    address, model, rows_path = sys.argv[1:4]
    client = httpclient.InferenceServerClient(url=address)
    metadata = client.get_model_metadata(model)
    client.close()
    x = read_rows(rows_path, metadata["parameters"]["features"])
    cases = tritonclient_cases(address, model, x)
    cases.update(asyncio.run(kserve_cases("http://" + address, model, x)))
    print(json.dumps({"rows": len(x), "cases": cases}))


if __name__ == "__main__":
    main()
