#!/usr/bin/env bash
# Builds a CUDA 13.0 toolkit tree for candle's `cuda` feature from PyPI wheels, on a
# machine without a GPU or a system CUDA (see shared/reference/cuda-build-from-pypi.md).
#
#   scripts/setup-cuda-home.sh DIR
#   export CUDA_HOME=DIR PATH=DIR/bin:$PATH CUDA_COMPUTE_CAP=90
#   cargo build --release --features cuda --bin esper
#
# CUDA 13.0 is pinned: the GPU machines' driver (580, CUDA 13.0) JIT-compiles
# candle's PTX, and newer nvcc emits PTX it rejects. CUDA_COMPUTE_CAP=90 targets
# H100/H200 (sm_90a). libcuda.so comes with the driver, so the build links against
# a stub made from cudarc's own list of driver functions; the real library is used
# at run time.
set -euo pipefail
dir=${1:?usage: scripts/setup-cuda-home.sh DIR}
mkdir -p "$dir"
CUDA_HOME=$(cd "$dir" && pwd)

python3 -m venv "$CUDA_HOME/venv"
"$CUDA_HOME/venv/bin/pip" install --quiet --no-deps --only-binary=:all: \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
site=$("$CUDA_HOME/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cu="$site/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "setup-cuda-home: no nvcc under $cu" >&2; exit 1; }

for d in bin include nvvm; do ln -sfn "$cu/$d" "$CUDA_HOME/$d"; done
mkdir -p "$CUDA_HOME/lib64/stubs"
for f in "$cu"/lib/*.so.* "$cu"/lib/*.a; do
  [ -e "$f" ] || continue
  ln -sf "$f" "$CUDA_HOME/lib64/"
  base=$(basename "$f")
  case "$base" in *.so.*) ln -sf "$f" "$CUDA_HOME/lib64/${base%%.so.*}.so" ;; esac
done

# The libcuda stub: every cu* driver function cudarc declares, returning an error.
cargo fetch --quiet
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -n 1)
grep -ohE 'fn cu[A-Za-z0-9_]+ *\(' "$cudarc/src/driver/sys/"*.rs | sed -E 's/fn (cu[A-Za-z0-9_]+).*/\1/' | sort -u \
  | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$CUDA_HOME/lib64/stubs/libcuda_stub.c"
count=$(wc -l < "$CUDA_HOME/lib64/stubs/libcuda_stub.c")
[ "$count" -gt 100 ] || { echo "setup-cuda-home: only $count driver functions found in $cudarc" >&2; exit 1; }
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_HOME/lib64/stubs/libcuda.so" "$CUDA_HOME/lib64/stubs/libcuda_stub.c"
ln -sf libcuda.so "$CUDA_HOME/lib64/stubs/libcuda.so.1"
echo "setup-cuda-home: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1); $count stub driver functions)"
