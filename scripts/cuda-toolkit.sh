#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from the Python package index, for building sisa's `cuda`
# feature on a machine without a system CUDA (and without a GPU):
#
#   scripts/cuda-toolkit.sh && . .cuda/env.sh && cargo build --release --features cuda
#
# Into `.cuda/` at the repository root (or SISA_CUDA_DIR): the pinned wheels (wheels/), unpacked
# into one tree whose nvidia/cu13 is CUDA_HOME, the unversioned link-time library names, a
# libcuda.so stub for linking (lib/stubs/, never named libcuda.so.1, so it cannot hide a real
# driver) and env.sh. A second run with everything in place only prints the environment.
# CUDA_COMPUTE_CAP (default 90: Hopper, sm_90a) may be preset for another GPU generation before
# sourcing env.sh. Needs python3 with pip, gcc and network access to the package index.
set -euo pipefail

# Pinned: cudarc 0.19.10 (Cargo.lock) accepts CUDA up to 13.4; the index's newest is newer.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)
CUDA_ERROR_STUB_LIBRARY=34

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${SISA_CUDA_DIR:-$repo_root/.cuda}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cuda_home=$dir/nvidia/cu13
wheel_dir=$dir/wheels
stamp=$dir/.complete
pins=$(printf '%s\n' "${WHEELS[@]}")

step=start
log() { printf 'cuda-toolkit: %s\n' "$*" >&2; }
trap 'log "FAILED in step: $step"' ERR
t0=$SECONDS
elapsed() { printf '%ds' $((SECONDS - t0)); }
size() { du -sh "$1" | cut -f1; }

write_env() {
  step="write env.sh"
  local env=$dir/env.sh
  local tmp=$env.tmp.$$
  cat >"$tmp" <<ENV
# Source before \`cargo build --release --features cuda\` (written by scripts/cuda-toolkit.sh).
export CUDA_HOME='$cuda_home'
export PATH="\$CUDA_HOME/bin:\$PATH"
# 90 = Hopper (sm_90a), what the lent H200 is; preset it for another GPU generation.
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="\$(nproc)"
ENV
  mv "$tmp" "$env"
}

finish() {
  write_env
  local rel=$dir
  case $dir in "$PWD"/*) rel=${dir#"$PWD"/} ;; esac
  log "CUDA_HOME=$cuda_home ($(size "$cuda_home"))"
  log "environment ($rel/env.sh):"
  sed -n 's/^export /  export /p' "$dir/env.sh" >&2
  log "done in $(elapsed); build with:"
  printf '. %s/env.sh && cargo build --release --features cuda\n' "$rel"
}

if [[ -f $stamp && $(cat "$stamp") == "$pins" && -f $cuda_home/lib/stubs/libcuda.so \
      && -x $cuda_home/bin/nvcc ]]; then
  log "toolkit already in place in $dir"
  finish
  exit 0
fi
rm -f "$stamp"

step="download wheels"
mkdir -p "$wheel_dir"
log "downloading ${#WHEELS[@]} pinned wheels into $wheel_dir (cached ones are reused)"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$wheel_dir" "${WHEELS[@]}" >&2
wheel_files=()
for pin in "${WHEELS[@]}"; do
  name=${pin%%==*}
  version=${pin#*==}
  shopt -s nullglob
  found=("$wheel_dir/${name//-/_}-$version-"*.whl)
  shopt -u nullglob
  if ((${#found[@]} != 1)); then
    log "expected one wheel for $pin in $wheel_dir, found ${#found[@]}"
    false
  fi
  wheel_files+=("${found[0]}")
done
log "wheels: $(du -ch "${wheel_files[@]}" | tail -1 | cut -f1) ($(elapsed))"

step="unpack wheels"
rm -rf "$dir/nvidia"
for whl in "${wheel_files[@]}"; do
  unzip -q -o "$whl" 'nvidia/*' -d "$dir"
done
# Wheels may not record Unix permissions: nvcc, ptxas, fatbinary, cicc, ... must be executable.
find "$cuda_home" -path '*/bin/*' -type f -exec chmod +x {} +
[[ -x $cuda_home/bin/nvcc && -f $cuda_home/include/cuda.h ]] || {
  log "no bin/nvcc or include/cuda.h under $cuda_home"
  false
}
log "unpacked: $(size "$cuda_home") ($(elapsed)); $("$cuda_home/bin/nvcc" --version | tail -1)"

step="link-time library names"
for lib in cudart nvrtc curand cublas cublasLt; do
  shopt -s nullglob
  versioned=("$cuda_home/lib/lib$lib.so."*)
  shopt -u nullglob
  if ((${#versioned[@]} == 0)); then
    log "no $cuda_home/lib/lib$lib.so.* to link libcuda$lib.so to"
    false
  fi
  # The shortest name is the SONAME (libcudart.so.13), the one the loader looks for.
  target=$(printf '%s\n' "${versioned[@]##*/}" | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2)
  ln -sfn "$target" "$cuda_home/lib/lib$lib.so"
done

step="driver stub"
stubs=$cuda_home/lib/stubs
mkdir -p "$stubs"
src=$stubs/libcuda-stub.c
# Every driver function cuda.h declares, read from its preprocessed text: as a program sees it
# (after the `#define cuXxx cuXxx_v2` renames), with the per-thread default stream renames
# (_ptsz/_ptds), and with __CUDA_API_VERSION_INTERNAL (the older unversioned names too), so the
# stub defines every name a binding may link against, as the real libcuda.so.1 does.
for defs in "" -DCUDA_API_PER_THREAD_DEFAULT_STREAM -D__CUDA_API_VERSION_INTERNAL; do
  # shellcheck disable=SC2086 # $defs is one flag or none
  gcc -E -P $defs -I"$cuda_home/include" "$cuda_home/include/cuda.h"
done | python3 -c '
import re, sys
text = re.sub(r"\s+", " ", sys.stdin.read())
names = sorted(set(re.findall(r"\bCUresult (cu\w+) ?\(", text)))
if not names:
    sys.exit("no CUresult cu*() declarations found in cuda.h")
print("/* libcuda.so stub for linking only; generated by scripts/cuda-toolkit.sh from cuda.h. */")
print("/* Every driver API function returns CUDA_ERROR_STUB_LIBRARY. */")
for n in names:
    print("int %s(void) { return %s; }" % (n, sys.argv[1]))
' "$CUDA_ERROR_STUB_LIBRARY" >"$src"
count=$(grep -c '^int cu' "$src")
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$src"
log "stub: $stubs/libcuda.so defines $count driver functions (SONAME libcuda.so.1)"

printf '%s\n' "$pins" >"$stamp"
finish
