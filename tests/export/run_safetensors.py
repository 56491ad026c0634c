"""Rebuild the ensemble of `sisa export --format safetensors` in NumPy and predict.

Usage: python3 run_safetensors.py MODEL.safetensors ROWS.csv

Nothing here comes from sisa's code: the tensors are read with the safetensors package's NumPy
API and the forward pass follows PyTorch's conventions (linear weights [out, in], convolution
weights [out_c, in_c, kh, kw] over NCHW images, flatten in C x H x W order), as
docs/formats.md documents them. Prints one JSON document with the labels and probabilities;
tests/export.rs compares it with `sisa predict --json`.
"""

import csv
import json
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from safetensors import safe_open
from safetensors.numpy import load_file


def conv2d(x, w, b, stride, padding):
    """Cross-correlation of x [n, c, h, w] with w [f, c, k, k], as torch.nn.Conv2d."""
    k = w.shape[2]
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    # win: [n, c, oh, ow, k, k]; sum over c, ky, kx.
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # [n, oh, ow, f]
    return out.transpose(0, 3, 1, 2) + b[None, :, None, None]


def maxpool2d(x, size):
    n, c, h, w = x.shape
    oh, ow = h // size, w // size
    x = x[:, :, : oh * size, : ow * size].reshape(n, c, oh, size, ow, size)
    return x.max(axis=(3, 5))


def forward(tensors, prefix, layers, input_shape, x):
    mean = tensors[prefix + "norm.mean"]
    scale = tensors[prefix + "norm.scale"]
    clip = tensors[prefix + "norm.clip"][0]
    h = np.clip((x - mean) * scale, -clip, clip).astype(np.float32)
    if len(input_shape) == 3:
        h = h.reshape([len(x)] + input_shape)
    for i, layer in enumerate(layers):
        kind = layer["kind"]
        if kind == "linear":
            h = h @ tensors[f"{prefix}{i}.weight"].T + tensors[f"{prefix}{i}.bias"]
        elif kind == "conv2d":
            h = conv2d(
                h,
                tensors[f"{prefix}{i}.weight"],
                tensors[f"{prefix}{i}.bias"],
                layer["stride"],
                layer["padding"],
            )
        elif kind == "maxpool2d":
            h = maxpool2d(h, layer["kernel_size"])
        elif kind == "flatten":
            h = h.reshape(len(h), -1)
        elif kind == "relu":
            h = np.maximum(h, 0)
        elif kind == "tanh":
            h = np.tanh(h)
        elif kind == "dropout":
            pass
        elif kind == "softmax":
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"unknown layer kind {kind}")
        h = h.astype(np.float32)
    return h


def main():
    path, rows = sys.argv[1], sys.argv[2]
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    tensors = load_file(path)
    names = json.loads(meta["sisa.feature_names"])
    layers = json.loads(meta["sisa.layers"])
    input_shape = json.loads(meta["sisa.input_shape"])
    classes = int(meta["sisa.classes"])
    with open(rows, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        at = [header.index(n) for n in names]
        x = np.array([[float(r[i]) for i in at] for r in reader], dtype=np.float32)
    shards = json.loads(meta["sisa.shards"])
    aggregation = meta["sisa.aggregation"]
    total = np.zeros((len(x), classes), dtype=np.float32)
    for s in shards:
        p = forward(tensors, f"shard.{s['shard']}.", layers, input_shape, x)
        if aggregation == "vote":
            total += np.eye(classes, dtype=np.float32)[p.argmax(axis=1)]
        elif aggregation == "weighted":
            total += np.float32(s["weight"]) * p
        else:
            total += p
    if aggregation != "weighted":
        total *= np.float32(1.0 / len(shards))
    print(
        json.dumps(
            {
                "labels": total.argmax(axis=1).tolist(),
                "probabilities": total.tolist(),
                "tensors": {k: list(v.shape) for k, v in tensors.items()},
                "metadata": meta,
            }
        )
    )


if __name__ == "__main__":
    main()
