#!/usr/bin/env bash
# Checks `--device cuda` end to end on a GPU machine, against `--device cpu` with the same
# library, on the bundled Pascal-Part sample. Expects, under $1 (default gpu-check/):
#   ort.tar.xz.part*             libonnxruntime.so.1.31.1 + providers_{shared,cuda}.so from the
#                                onnxruntime-gpu 1.31.1 wheel (tar | xz, split to fit transfers)
#   partlens                     a release build of this repository
#   mobilenet_v2_imagenet.onnx   the default model (`partlens setup`)
# CUDA 13 / cuDNN 9 libraries are looked up in Python's site-packages (PyTorch's nvidia-* wheels)
# and the usual system folders. Results go to $OUT (default /tmp/gpu-check-out).
set -uo pipefail
G=${1:-gpu-check}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT" "$G/ort"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ ! -f "$G/ort/libonnxruntime.so.1.31.1" ]; then
  cat "$G"/ort.tar.xz.part* | xz -dc | tar xf - -C "$G/ort" || exit 1
fi
LIBDIRS=$(python3 - <<'PY'
import glob, os, site, sys
names = ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcudnn.so.9",
         "libcufft.so.12", "libcurand.so.10", "libnvrtc.so.13"]
roots = site.getsitepackages() + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/local/lib"]
found = {}
for r in roots:
    for n in names:
        for p in glob.glob(os.path.join(r, "**", n), recursive=True):
            found.setdefault(n, os.path.dirname(p))
print("missing:", [n for n in names if n not in found], file=sys.stderr)
print(":".join(sorted(set(found.values()))))
PY
)
export LD_LIBRARY_PATH="$LIBDIRS:${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" > "$OUT/env.txt"
B="$G/partlens"; chmod +x "$B"
LIB="$G/ort/libonnxruntime.so.1.31.1"
M="$G/mobilenet_v2_imagenet.onnx"
run() { # name device extra...
  local name=$1 dev=$2; shift 2
  "$B" --ort-lib "$LIB" --device "$dev" ingest --dataset data/samples/pascal_part --model "$M" \
    --min-area 1 --overwrite --out "/tmp/idx_$name" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"
  echo "$name rc=$?: $(grep indexed "$OUT/$name.txt")"
}
run cuda_warmup cuda
run cuda cuda --batch-size 64
run cpu cpu --batch-size 64
run auto auto
grep -h "execution provider" "$OUT/auto.log"
"$B" --ort-lib "$LIB" --device cuda query --index /tmp/idx_cuda --json -k 3 \
  --image data/samples/pascal_part/img/val/2008_003228.jpg --box 140,120,402,372 > "$OUT/query.json" 2> "$OUT/query.log"
echo "query rc=$?"; head -c 400 "$OUT/query.json"; echo
python3 - <<'PY'
import numpy as np
a = np.load("/tmp/idx_cuda/features/mean.npy"); b = np.load("/tmp/idx_cpu/features/mean.npy")
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"cuda vs cpu mean features: {a.shape}, min cosine {cos.min():.6f}, max abs diff {np.abs(a - b).max():.2e}")
PY
cp /tmp/idx_cuda/manifest.json "$OUT/manifest_cuda.json"
