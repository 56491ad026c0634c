#!/usr/bin/env python3
"""Accuracy of a plain (unsharded) MLP on a bundled dataset, with scikit-learn, for comparison
with `sisa train --shards 1 --slices 1`.

Same split, same architecture as models/mlp.toml (one hidden layer of 128, tanh), Adam with
learning rate 0.001, batch 64, 30 epochs, features standardized. scikit-learn is not a
dependency of sisa: install it with `pip install scikit-learn` to run this.

    python3 benches/plain_mlp_reference.py datasets/mnist-5k
"""
import csv
import gzip
import sys
import warnings
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
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = Path(sys.argv[1])
    ext = ".csv.gz" if (d / "train.csv.gz").exists() else ".csv"
    xtr, ytr = load(d / f"train{ext}")
    xte, yte = load(d / f"test{ext}")
    accs = []
    for seed in range(5):
        clf = make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(128,), activation="tanh", solver="adam",
                          learning_rate_init=0.001, batch_size=64, max_iter=30, random_state=seed),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xtr, ytr)
        accs.append(clf.score(xte, yte))
    mean = sum(accs) / len(accs)
    print(f"{d.name}: plain MLP (scikit-learn) test accuracy over 5 seeds: mean {mean:.4f}, "
          f"min {min(accs):.4f}, max {max(accs):.4f}")


if __name__ == "__main__":
    main()
