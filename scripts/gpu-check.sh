#!/usr/bin/env bash
# Checks a prebuilt `cuda` build of sisa on a machine with an NVIDIA GPU:
#
#   scripts/gpu-check.sh BINARY OUT_DIR
#
# Needs only the binary, this repository (its bundled datasets/ and models/), python3, curl and
# the NVIDIA driver: no Rust toolchain, no network. The CUDA libraries the binary links
# (libcudart, libcublas, libcublasLt, libcurand) are taken from LD_LIBRARY_PATH or, when a
# Python site-packages holds the nvidia/cu13 wheels (as PyTorch installs them), from there.
#
# Steps, each timed and recorded (a failing step is recorded and the next one runs):
#   1. nvidia-smi -L and the driver version; BINARY --version.
#   2. For the presets mlp-image and cnn, on datasets/mnist-5k and on Fashion-MNIST (when
#      installed): train twice (--shards 20 --slices 5) and compare the model digests (one
#      device: the same bits), unlearn three users from run A, verify run A (every shard
#      retrained from scratch and compared bitwise).
#   3. serve run A, one infer request over HTTP (status and latency), stop the server.
#   4. Throughput of training the cnn preset (--shards 1 and --shards 20), and of
#      scripts/torch_throughput.py training the same network when PyTorch sees a GPU.
#   5. OUT_DIR/gpu-check.json: the machine, the GPU, the driver, each step's result and seconds.
# Exit status 0 only when no step failed. Logs of every command are under OUT_DIR/logs.
#
# Environment (for checking the script itself on a machine without a GPU):
#   SISA_CHECK_DEVICE   the --device value (default cuda; cpu on a CPU build)
#   SISA_CHECK_BACKEND  the --backend value (default candle, the code that runs on CUDA; empty:
#                       the binary's default)
#   SISA_CHECK_EPOCHS   --epochs for every train (default: the preset's)
#   SISA_CHECK_FASHION  the Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist;
#                       empty: skip it)
#   SISA_CHECK_BUDGET_S seconds for all steps (default 540); a step never runs past what is
#                       left, and the steps still to come when it is spent are recorded skipped
set -uo pipefail

if (($# != 2)); then
  echo "usage: $0 BINARY OUT_DIR" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(readlink -f "$1")
mkdir -p "$2/logs"
out=$(cd "$2" && pwd)
logs=$out/logs
steps=$out/steps.jsonl
: >"$steps"
device=${SISA_CHECK_DEVICE:-cuda}
backend=${SISA_CHECK_BACKEND-candle}
epochs=${SISA_CHECK_EPOCHS:-}
fashion=${SISA_CHECK_FASHION-/usr/share/datasets/fashion-mnist}
budget=${SISA_CHECK_BUDGET_S:-540}
mnist=$repo/datasets/mnist-5k
failed=0

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
start=$(now)
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
left() { awk -v a="$start" -v b="$(now)" -v t="$budget" 'BEGIN { l = t - (b - a); printf "%d", (l > 0 ? l : 0) }'; }
progress() { printf '[gpu-check %6.1fs] %s\n' "$(since "$start")" "$*" >&2; }

# record NAME STATUS SECONDS DETAIL_JSON: one line of steps.jsonl (STATUS ok|failed|skipped).
record() {
  local detail=${4:-}
  [[ -z $detail ]] && detail='{}'
  python3 -c '
import json, sys
name, status, seconds, detail = sys.argv[1:5]
print(json.dumps({"step": name, "status": status, "seconds": float(seconds), **{k: v for k, v in json.loads(detail).items() if k not in ("step", "status", "seconds")}}))
' "$1" "$2" "$3" "$detail" >>"$steps"
  [[ $2 == failed ]] && failed=1
  progress "$1: $2 (${3}s)"
}

# jq-like reads without jq: json_get FILE EXPR (a Python expression over `d`).
json_get() {
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2])
print(v if isinstance(v, str) else json.dumps(v))
' "$1" "$2"
}

# Python-quoted JSON string of a file's last lines (for error details).
tail_json() { tail -c 600 "$1" 2>/dev/null | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read()))'; }

# run NAME CAP CMD...: runs CMD with its output in logs/NAME.{out,err}, for at most CAP seconds
# and never past the budget; sets rc and secs. rc 124: ran out of time; 125: no time left.
run() {
  local name=$1 cap=$2
  shift 2
  local t
  t=$(left)
  ((t < cap)) && cap=$t
  secs=0
  if ((cap < 5)); then
    rc=125
    return 0
  fi
  progress "$name: $*"
  mkdir -p "$(dirname "$logs/$name")"
  local t0
  t0=$(now)
  timeout --kill-after=10 "$cap" "$@" >"$logs/$name.out" 2>"$logs/$name.err"
  rc=$?
  secs=$(since "$t0")
}

# result NAME [DETAIL_JSON]: records the last run's outcome.
result() {
  local name=$1 detail=${2:-}
  if ((rc == 125)); then
    record "$name" skipped 0 '{"reason": "the time budget is spent"}'
  elif ((rc == 0)); then
    [[ -z $detail ]] && detail='{"rc": 0}'
    record "$name" ok "$secs" "$detail"
  elif ((rc == 124 || rc == 137)); then
    record "$name" failed "$secs" "{\"rc\": $rc, \"reason\": \"stopped at its time limit\", \"stderr\": $(tail_json "$logs/$name.err")}"
  else
    record "$name" failed "$secs" "{\"rc\": $rc, \"stderr\": $(tail_json "$logs/$name.err")}"
  fi
}

skip() { record "$1" skipped 0 "{\"reason\": \"$2\"}"; }

# The CUDA libraries the binary links and the loader does not find yet: looked for in the
# Python site-packages (PyTorch's nvidia/cu13 wheels, which ship libcudart, libcublas and
# libcublasLt but not always libcurand), then in a system CUDA; each folder that holds one is
# put on LD_LIBRARY_PATH. What is still missing is recorded by the `libraries` step.
added_libs=
missing_libs() { ldd "$bin" 2>/dev/null | awk '/not found/ { print $1 }'; }
if [[ -n $(missing_libs) ]]; then
  mapfile -t lib_dirs < <(
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
      [[ -d $sp/nvidia ]] && printf '%s\n' "$sp"/nvidia/cu13/lib "$sp"/nvidia/*/lib
    done
    printf '%s\n' /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64
  )
  for lib in $(missing_libs); do
    [[ $lib == libcuda.so.1 ]] && continue # the driver's: never from a toolkit
    for d in "${lib_dirs[@]}"; do
      if [[ -e $d/$lib ]]; then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *)
          export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
          added_libs="$added_libs${added_libs:+:}$d"
          progress "$lib from $d"
          ;;
        esac
        break
      fi
    done
  done
fi
missing=$(missing_libs | tr '\n' ' ')
libs_detail=$(python3 -c 'import json, sys; print(json.dumps({"missing": sys.argv[1].split(), "added_to_ld_library_path": sys.argv[2]}))' "$missing" "$added_libs")
if [[ -z $missing ]]; then
  record libraries ok 0 "$libs_detail"
else
  record libraries failed 0 "$libs_detail"
fi

# --device and --backend for a command, when the binary's command takes them.
flags() {
  local help
  help=$("$bin" "$1" --help 2>/dev/null)
  if grep -q -- '--device' <<<"$help"; then
    printf '%s\n' --device "$device"
  elif [[ $device != cpu ]]; then
    # Without the flag the command would silently run on the CPU.
    printf '%s\n' --device-unsupported-by-this-binary
  fi
  if [[ $1 == train && -n $backend ]] && grep -q -- '--backend' <<<"$help"; then
    printf '%s\n' --backend "$backend"
  fi
}
mapfile -t train_flags < <(flags train)
mapfile -t unlearn_flags < <(flags unlearn)
mapfile -t verify_flags < <(flags verify)
mapfile -t serve_flags < <(flags serve)
epoch_flags=()
[[ -n $epochs ]] && epoch_flags=(--epochs "$epochs")

# ---- 1. the machine and the binary
gpu=null
driver=null
if ! command -v nvidia-smi >/dev/null && [[ $device != cuda* ]]; then
  skip smi "no nvidia-smi; device $device"
else
  run smi 30 nvidia-smi -L
  smi_rc=$rc smi_secs=$secs
  if ((rc == 0)); then
    gpu=$(head -1 "$logs/smi.out" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')
    run smi-query 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    if ((rc == 0)); then
      driver=$(head -1 "$logs/smi-query.out" | cut -d, -f2 | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')
    fi
  fi
  rc=$smi_rc secs=$smi_secs
  result smi "{\"gpus\": $(python3 -c 'import json, sys; print(json.dumps(open(sys.argv[1]).read().splitlines()))' "$logs/smi.out"), \"query\": $(tail_json "$logs/smi-query.out"), \"driver\": $driver}"
fi
run version 30 "$bin" --version
result version "{\"version\": $(tail_json "$logs/version.out")}"

# ---- 2. train twice, compare digests, unlearn, verify
# data NAME: the train/test flags of a data set.
data_flags() {
  case $1 in
    mnist-5k) printf '%s\n' --data "$mnist/train.csv.gz" --test "$mnist/test.csv.gz" ;;
    fashion-mnist)
      printf '%s\n' --data "$fashion/train-images-idx3-ubyte.gz" \
        --test "$fashion/t10k-images-idx3-ubyte.gz" --users uniform:500
      ;;
  esac
}
# candidates NAME: user ids that may be in the training data, in order.
candidates() {
  case $1 in
    mnist-5k) gzip -dc "$mnist/train.csv.gz" | tail -n +2 | cut -d, -f1 | awk '!seen[$0]++' | head -20 ;;
    fashion-mnist) for i in $(seq 0 19); do echo "u$i"; done ;;
  esac
}

exactness() {
  local ds=$1 preset=$2 p=$1/$2
  local runs=$out/runs/$ds
  local a=$runs/$preset-a b=$runs/$preset-b
  mkdir -p "$runs" "$logs/$ds"
  rm -rf "$a" "$b"
  local -a dflags
  mapfile -t dflags < <(data_flags "$ds")
  local -a common=("${dflags[@]}" --model "$preset" --shards 20 --slices 5 --seed 7 "${epoch_flags[@]}" "${train_flags[@]}" --json)
  run "$p/train-a" 240 "$bin" train "${common[@]}" --out "$a"
  local a_ok=$rc
  result "$p/train-a" "$( ((rc == 0)) && json_get "$logs/$p/train-a.out" 'json.dumps({"rows": d["rows"], "rows_epochs": d["rows_epochs"], "train_seconds": d["seconds"]})')"
  run "$p/train-b" 240 "$bin" train "${common[@]}" --out "$b"
  local b_ok=$rc
  result "$p/train-b" "$( ((rc == 0)) && json_get "$logs/$p/train-b.out" 'json.dumps({"rows_epochs": d["rows_epochs"], "train_seconds": d["seconds"]})')"
  if ((a_ok == 0 && b_ok == 0)); then
    local t0
    t0=$(now)
    local da db
    da=$("$bin" status --run "$a" --json 2>>"$logs/$p/digests.err") &&
      db=$("$bin" status --run "$b" --json 2>>"$logs/$p/digests.err")
    rc=$?
    if ((rc == 0)); then
      local cmp
      cmp=$(python3 -c '
import json, sys
a = [s["model_digest"] for s in json.loads(sys.argv[1])["shards"]]
b = [s["model_digest"] for s in json.loads(sys.argv[2])["shards"]]
print(json.dumps({"equal": a == b, "shards": len(a), "differing_shards": [i for i, (x, y) in enumerate(zip(a, b)) if x != y]}))
' "$da" "$db")
      if [[ $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["equal"])' "$cmp") == True ]]; then
        record "$p/digests" ok "$(since "$t0")" "$cmp"
      else
        record "$p/digests" failed "$(since "$t0")" "$cmp"
      fi
    else
      record "$p/digests" failed "$(since "$t0")" "{\"stderr\": $(tail_json "$logs/$p/digests.err")}"
    fi
  else
    skip "$p/digests" "a training run failed"
  fi
  if ((a_ok != 0)); then
    skip "$p/unlearn" "run A was not trained"
    skip "$p/verify" "run A was not trained"
    return
  fi
  # Three users the run holds: the first candidates a dry run accepts.
  local -a users=() uflags=()
  local u
  for u in $(candidates "$ds"); do
    if "$bin" unlearn --run "$a" --user "$u" --dry-run >/dev/null 2>>"$logs/$p/users.err"; then
      users+=("$u")
      uflags+=(--user "$u")
    fi
    ((${#users[@]} == 3)) && break
  done
  if ((${#users[@]} < 3)); then
    record "$p/unlearn" failed 0 "{\"reason\": \"fewer than three users found\", \"stderr\": $(tail_json "$logs/$p/users.err")}"
  else
    run "$p/unlearn" 180 "$bin" unlearn --run "$a" "${uflags[@]}" "${unlearn_flags[@]}" --json
    result "$p/unlearn" "$(python3 -c 'import json, sys; print(json.dumps({"users": sys.argv[1:]}))' "${users[@]}")"
  fi
  run "$p/verify" 240 "$bin" verify --run "$a" "${verify_flags[@]}"
  case $rc in
    0) record "$p/verify" ok "$secs" '{"verdict": "identical", "rc": 0}' ;;
    3) record "$p/verify" failed "$secs" "{\"verdict\": \"different\", \"rc\": 3, \"stdout\": $(tail_json "$logs/$p/verify.out")}" ;;
    *) result "$p/verify" ;;
  esac
}

exactness mnist-5k mlp-image
exactness mnist-5k cnn

# ---- 3. serve run A, one infer request
serve_check() {
  local a=$out/runs/mnist-5k/cnn-a name=serve
  if [[ ! -f $a/CURRENT && ! -d $a ]]; then
    skip $name "no trained mnist-5k cnn run"
    return
  fi
  local t0 pid
  t0=$(now)
  "$bin" serve --run "$a" "${serve_flags[@]}" --addr 127.0.0.1:0 --json >"$logs/serve.out" 2>"$logs/serve.err" &
  pid=$!
  local addr="" model="" i
  for ((i = 0; i < 600; i++)); do
    if [[ -s $logs/serve.out ]]; then
      addr=$(head -1 "$logs/serve.out" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["addr"])' 2>/dev/null)
      model=$(head -1 "$logs/serve.out" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["model"])' 2>/dev/null)
      [[ -n $addr ]] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  local started
  started=$(since "$t0")
  if [[ -z $addr ]] || ! kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    record $name failed "$started" "{\"reason\": \"the server did not start\", \"stderr\": $(tail_json "$logs/serve.err")}"
    return
  fi
  # The first held-out image: 784 pixels after the user and label columns.
  local pixels body
  pixels=$(gzip -dc "$mnist/test.csv.gz" | sed -n 2p | cut -d, -f3-)
  body="{\"id\": \"gpu-check\", \"inputs\": [{\"name\": \"input\", \"shape\": [1, 784], \"datatype\": \"FP32\", \"data\": [$pixels]}]}"
  local answer
  answer=$(curl -s -o "$logs/serve-answer.json" -w '%{http_code} %{time_total}' \
    -H 'Content-Type: application/json' -d "$body" "http://$addr/v2/models/$model/infer")
  kill "$pid"
  wait "$pid" 2>/dev/null
  local code=${answer%% *} latency=${answer#* }
  local label
  label=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["outputs"][0]["data"][0])' "$logs/serve-answer.json" 2>/dev/null || echo null)
  local truth
  truth=$(gzip -dc "$mnist/test.csv.gz" | sed -n 2p | cut -d, -f2)
  local detail="{\"http_status\": ${code:-0}, \"latency_s\": ${latency:-null}, \"startup_s\": $started, \"model\": \"$model\", \"label\": $label, \"true_label\": $truth}"
  if [[ $code == 200 ]]; then
    record $name ok "$(since "$t0")" "$detail"
  else
    record $name failed "$(since "$t0")" "$detail"
  fi
}
serve_check

# ---- 4. throughput of the cnn preset: sisa on one shard and on 20, PyTorch on the same network
sisa_sps=null
for s in 1 20; do
  name=throughput/sisa-shards-$s
  mkdir -p "$logs/throughput"
  rm -rf "$out/runs/throughput-$s"
  run "$name" 180 "$bin" train --data "$mnist/train.csv.gz" --model cnn --shards "$s" --slices 1 --seed 7 \
    "${epoch_flags[@]}" "${train_flags[@]}" --json --out "$out/runs/throughput-$s"
  detail=
  if ((rc == 0)); then
    detail=$(json_get "$logs/$name.out" 'json.dumps({"rows_epochs": d["rows_epochs"], "train_seconds": d["seconds"], "samples_per_s": d["rows_epochs"] / d["seconds"]})')
    ((s == 1)) && sisa_sps=$(json_get "$logs/$name.out" 'd["rows_epochs"] / d["seconds"]')
  fi
  result "$name" "$detail"
done
torch_device=cuda
[[ $device == cpu ]] && torch_device=cpu
if python3 -c "import torch; assert torch.cuda.is_available() or '$torch_device' == 'cpu'" 2>/dev/null; then
  run throughput/torch 240 python3 "$repo/scripts/torch_throughput.py" --data "$mnist/train.csv.gz" \
    --device "$torch_device" ${epochs:+--epochs "$epochs"} --json
  detail=
  if ((rc == 0)); then
    detail=$(python3 -c '
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
d["train_seconds"] = d.pop("seconds")
s = sys.argv[2]
d["sisa_shards_1_samples_per_s"] = None if s == "null" else float(s)
d["sisa_over_torch"] = None if s == "null" else float(s) / d["samples_per_s"]
print(json.dumps(d))
' "$logs/throughput/torch.out" "$sisa_sps")
  fi
  result throughput/torch "$detail"
else
  skip throughput/torch "PyTorch is not installed or sees no GPU"
fi

# ---- the larger data set last: it is optional and the most expensive
if [[ -n $fashion && -f $fashion/train-images-idx3-ubyte.gz ]]; then
  exactness fashion-mnist mlp-image
  exactness fashion-mnist cnn
else
  skip fashion-mnist "not installed (${fashion:-SISA_CHECK_FASHION is empty})"
fi

# ---- 5. the report
python3 - "$steps" "$out/gpu-check.json" "$gpu" "$driver" "$device" "$bin" "$(since "$start")" "$failed" <<'PY'
import json, platform, os, sys
steps_file, dest, gpu, driver, device, binary, seconds, failed = sys.argv[1:9]
steps = [json.loads(line) for line in open(steps_file)]
report = {
    "machine": {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()},
    "gpu": json.loads(gpu),
    "driver": json.loads(driver),
    "device": device,
    "binary": binary,
    "seconds": float(seconds),
    "ok": failed == "0",
    "failed_steps": [s["step"] for s in steps if s["status"] == "failed"],
    "steps": steps,
}
with open(dest + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
os.replace(dest + ".tmp", dest)
PY
progress "wrote $out/gpu-check.json; $(grep -c '"status": "failed"' "$steps") step(s) failed"
exit "$failed"
