"""Run an ONNX model exported by `sisa export --format onnx` with onnxruntime.

Usage: python3 run_onnx.py MODEL.onnx ROWS.csv

Reads the CSV's feature columns in the order the model's metadata names them
(`sisa.feature_names`), feeds them as FLOAT [n, features] to the input `input`, and prints one
JSON document: the labels and probabilities, the input and output names, types and shapes,
and the model's metadata. tests/export.rs compares it with `sisa predict --json`.
"""

import csv
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, rows = sys.argv[1], sys.argv[2]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta()
    names = json.loads(meta.custom_metadata_map["sisa.feature_names"])
    with open(rows, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        at = [header.index(n) for n in names]
        x = np.array([[float(r[i]) for i in at] for r in reader], dtype=np.float32)
    probabilities, label = session.run(["probabilities", "label"], {"input": x})

    def io(args):
        return [{"name": a.name, "type": a.type, "shape": a.shape} for a in args]

    print(
        json.dumps(
            {
                "labels": label.tolist(),
                "label_dtype": str(label.dtype),
                "probabilities": probabilities.tolist(),
                "inputs": io(session.get_inputs()),
                "outputs": io(session.get_outputs()),
                "metadata": dict(meta.custom_metadata_map),
                "version": meta.version,
                "producer": meta.producer_name,
            }
        )
    )


if __name__ == "__main__":
    main()
