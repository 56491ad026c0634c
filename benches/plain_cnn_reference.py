#!/usr/bin/env python3
"""Accuracy of a plain (unsharded) CNN on a bundled dataset, with PyTorch, for comparison with
`sisa train --model models/cnn.toml --shards 1 --slices 1`.

Same split and the same network as models/cnn.toml (conv 32 3x3 pad 1, relu, maxpool 2, conv 64
3x3 pad 1, relu, maxpool 2, dense 128, relu, dense to the classes), Adam with learning rate
0.001, batch 64, 10 epochs, on one CPU thread. Two preprocessings: pixels standardized per
feature on the training rows and clipped to +-6 (what `sisa` does), and pixels scaled by 1/255
(the usual recipe). PyTorch is not a dependency of sisa: `pip install torch` to run this.

    python3 benches/plain_cnn_reference.py datasets/mnist-5k [--seeds 3] [--epochs 10]
"""
import argparse
import csv
import gzip
from pathlib import Path


def load(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    label = header.index("label")
    user = header.index("user_id")
    feats = [i for i in range(len(header)) if i not in (label, user)]
    x = [[float(r[i]) for i in feats] for r in body]
    y = [int(r[label]) for r in body]
    return x, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    d = Path(args.dataset)
    ext = ".csv.gz" if (d / "train.csv.gz").exists() else ".csv"
    xtr, ytr = load(d / f"train{ext}")
    xte, yte = load(d / f"test{ext}")
    xtr, xte = torch.tensor(xtr), torch.tensor(xte)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    side = int(round(xtr.shape[1] ** 0.5))
    classes = int(max(ytr.max(), yte.max())) + 1
    mean, sd = xtr.mean(0), xtr.std(0, unbiased=False)
    scale = torch.where(sd > 1e-6 * (1 + mean.abs()), 1 / sd, torch.ones_like(sd))
    prep = {
        "standardized (as sisa)": lambda x: ((x - mean) * scale).clamp(-6, 6),
        "scaled by 1/255": lambda x: x / 255.0,
    }
    nn = torch.nn
    for name, f in prep.items():
        accs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(64 * (side // 4) ** 2, 128), nn.ReLU(),
                nn.Linear(128, classes),
            )
            opt = torch.optim.Adam(model.parameters(), lr=0.001)
            loss_fn = nn.CrossEntropyLoss()
            x = f(xtr).reshape(-1, 1, side, side)
            for _ in range(args.epochs):
                perm = torch.randperm(len(x))
                for i in range(0, len(x), 64):
                    idx = perm[i : i + 64]
                    opt.zero_grad()
                    loss_fn(model(x[idx]), ytr[idx]).backward()
                    opt.step()
            with torch.no_grad():
                pred = model(f(xte).reshape(-1, 1, side, side)).argmax(1)
            accs.append(float((pred == yte).float().mean()))
        print(f"{d.name}: plain CNN (PyTorch {torch.__version__}), {name}, {args.epochs} epochs, "
              f"{args.seeds} seeds: mean {sum(accs) / len(accs):.4f}, "
              f"min {min(accs):.4f}, max {max(accs):.4f}", flush=True)


if __name__ == "__main__":
    main()
