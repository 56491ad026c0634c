#!/usr/bin/env python3
"""Training throughput of sisa's `cnn` preset (models/cnn.toml) in PyTorch, for comparison.

The same network, optimizer and preprocessing as `sisa train --model cnn --shards 1 --slices 1`:
input 1x28x28 > conv 32 3x3 (padding 1) > relu > maxpool 2 > conv 64 3x3 (padding 1) > relu >
maxpool 2 > flatten > dense 128 > relu > dense to the class count (softmax cross-entropy, the
mean over the batch); Adam (beta 0.9/0.999, eps 1e-8, no weight decay), lr 0.001, batch 64,
10 epochs, every row once an epoch in a fresh shuffled order (the last batch may be short);
pixels scaled by 1/255 and each training image shifted by -1..=1 pixels right and down (the
uncovered pixels 0), drawn per row and epoch. The initialisation and the draws are PyTorch's,
so the numbers are not sisa's, only the work is the same: rows x epochs samples.

Reads a gzipped or plain CSV with a header (`user_id,label,p0_0,...`, as datasets/mnist-5k),
times the training loop alone (data already on the device, synchronized at the end) and prints
one JSON line: samples_per_s, rows_epochs, seconds, device, the final epoch's mean loss and the
training accuracy. Needs torch only to run, not for --help.
"""

import argparse
import csv
import gzip
import json
import sys
import time


def read_csv(path):
    """Labels and pixel rows of a CSV with `label` and 784 pixel columns."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        label = header.index("label")
        pixels = [i for i, name in enumerate(header) if name.startswith("p")]
        if len(pixels) != 784:
            sys.exit(f"{path}: {len(pixels)} pixel columns, expected 784 (28x28)")
        labels, rows = [], []
        for line, record in enumerate(reader, start=2):
            if len(record) != len(header):
                sys.exit(f"{path}, line {line}: {len(record)} fields, expected {len(header)}")
            labels.append(int(record[label]))
            rows.append([float(record[i]) for i in pixels])
    return labels, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="training CSV (e.g. datasets/mnist-5k/train.csv.gz)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10, the preset's)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam learning rate (default 0.001)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--seed", type=int, default=7, help="torch seed (default 7)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be at least 1")

    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    labels, rows = read_csv(args.data)
    x = torch.tensor(rows, dtype=torch.float32).reshape(-1, 1, 28, 28).div_(255.0).to(device)
    y = torch.tensor(labels, dtype=torch.int64).to(device)
    n, classes = x.shape[0], int(y.max().item()) + 1

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()

    # Shifts by -1..=1 each way: crop a 28x28 window of the image padded by 1.
    base = torch.arange(28, device=device)

    def shifted(batch):
        b = batch.shape[0]
        padded = nn.functional.pad(batch, (1, 1, 1, 1))
        dy = torch.randint(-1, 2, (b,), device=device)
        dx = torch.randint(-1, 2, (b,), device=device)
        rows_ix = (base[None, :] + 1 - dy[:, None])[:, :, None]
        cols_ix = (base[None, :] + 1 - dx[:, None])[:, None, :]
        return padded[torch.arange(b, device=device)[:, None, None], 0, rows_ix, cols_ix].unsqueeze(1)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    started = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for at in range(0, n, args.batch_size):
            ix = order[at : at + args.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(shifted(x[ix])), y[ix])
            loss.backward()
            opt.step()
            total += loss.detach() * ix.shape[0]
    sync()
    seconds = time.perf_counter() - started

    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(x[at : at + 1024]).argmax(1) == y[at : at + 1024]).sum().item() for at in range(0, n, 1024)
        )
    result = {
        "samples_per_s": n * args.epochs / seconds,
        "rows_epochs": n * args.epochs,
        "seconds": seconds,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "final_epoch_loss": total.item() / n,
        "train_accuracy": correct / n,
    }
    if not args.json:
        print(f"{result['rows_epochs']} rows x epochs in {seconds:.2f}s on {result['device']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
