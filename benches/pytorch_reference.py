#!/usr/bin/env python3
"""PyTorch reference for benches/train_throughput.rs: the same models, data shapes, batch
sizes and optimizer (AdamW, lr 0.001, weight decay 0.01), trained on random data on the CPU
with one thread per process, one process per shard.

Prints one line per measurement: `case batch processes samples_per_second` (all processes
together, the best of --repeats runs). Case numbers match train_throughput.rs:
0 = MLP 600-128-100 tanh, 1 = MLP 784-128-10 tanh, 2 = logistic regression 600-100,
3 = the CNN preset (models/cnn.toml) on 1x28x28 inputs, 10 classes.

    pip install torch
    python3 benches/pytorch_reference.py --rows 16384 --epochs 3 --repeats 3
"""
import argparse
import multiprocessing as mp
import os
import time

CASES = [(600, [128], 100), (784, [128], 10), (600, [], 100), ("cnn", None, 10)]


def cnn(torch):
    """models/cnn.toml: conv 32 3x3 pad 1, relu, maxpool 2, conv 64 3x3 pad 1, relu,
    maxpool 2, flatten, dense 128, relu, dense 10."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train(case, batch, rows, epochs, seed, out):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    inputs, hidden, classes = CASES[case]
    if inputs == "cnn":
        model = cnn(torch)
        shape = (rows, 1, 28, 28)
    else:
        dims = [inputs] + hidden + [classes]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(torch.nn.Tanh())
        model = torch.nn.Sequential(*layers)
        shape = (rows, inputs)
    opt = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand(*shape) * 2 - 1
    y = torch.randint(0, classes, (rows,))
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(rows)
        for i in range(0, rows, batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    out.put(rows * epochs / (time.perf_counter() - start))


def measure(case, batch, procs, rows, epochs):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=train, args=(case, batch, rows, epochs, s, q)) for s in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cnn-rows", type=int, default=4096)
    ap.add_argument("--cnn-epochs", type=int, default=1)
    ap.add_argument("--cases", default="0,1,2,3", help="comma-separated case numbers")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    for case in [int(c) for c in args.cases.split(",") if c]:
        is_cnn = CASES[case][0] == "cnn"
        rows = args.cnn_rows if is_cnn else args.rows
        epochs = args.cnn_epochs if is_cnn else args.epochs
        for batch in (128, 256):
            for procs in sorted({1, cores}):
                rate = max(
                    measure(case, batch, procs, rows, epochs)
                    for _ in range(args.repeats)
                )
                print(f"{case} {batch} {procs} {rate:.1f}", flush=True)


if __name__ == "__main__":
    main()
