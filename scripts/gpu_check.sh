#!/usr/bin/env bash
# The whole device check in one go (issue 13), printing every figure; results also go to $OUT
# (default /tmp/gpu-check-out). Prepare its inputs here with scripts/gpu_pack.sh (see there
# for the calls that stage the ONNX Runtime parts in /tmp/ort-parts first). Expects:
#   $ORT_PARTS (default /tmp/ort-parts, else gpu-check/)/ort.tar.xz.part*  onnxruntime-gpu 1.31.1
#   gpu-check/partlens, gpu-check/mobilenet_v2_imagenet.onnx, .whl/onnxconverter_common-*.whl
# CUDA 13 / cuDNN 9 libraries are looked up in Python's site-packages (PyTorch's nvidia-*
# wheels) and the usual system folders. PyTorch, timm, numpy, onnx and onnxruntime are the
# machine's own.
#
# What it measures, on the Pascal-Part sample ten times over (10,430 regions with --min-area 1):
#  1. MobileNetV2, fp32 and fp16: encoder alone (encode-bench, batch 256, both sessions) and
#     end to end (ingest --device cuda); the same with one session and with I/O binding off;
#     --device cpu on the same machine.
#  2. ViT-B/16 (random weights, vit.py --preset base): partlens end to end in fp16 and fp32,
#     its encoder alone, and PyTorch (fp16 autocast, channels-last, batch 256, inference mode,
#     pre-made tensors) on the same weights; the ratio partlens end to end / PyTorch.
#  3. Agreement, cosine per region: CUDA vs CPU (fp32), fp16 vs fp32 (CUDA), worst case.
set -uo pipefail
cd "$(dirname "$0")/.."
G=gpu-check
OUT=${OUT:-/tmp/gpu-check-out}
ORT_PARTS=${ORT_PARTS:-/tmp/ort-parts}
mkdir -p "$OUT" "$G/ort" /tmp/m
S="$OUT/summary.txt"; : > "$S"
say() { echo "$*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
say "cores: $(nproc)"
if [ ! -f "$G/ort/libonnxruntime.so.1.31.1" ]; then
  parts=$(ls "$ORT_PARTS"/ort.tar.xz.part* 2>/dev/null || ls "$G"/ort.tar.xz.part*)
  cat $parts | xz -dc | tar xf - -C "$G/ort" || { say "cannot unpack ONNX Runtime"; exit 1; }
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
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
B="$G/partlens"; chmod +x "$B"
P=(--ort-lib "$G/ort/libonnxruntime.so.1.31.1")

# The sample ten times over: every image and label map copied under ten names.
D=/tmp/pp10
if [ ! -d "$D" ]; then
  mkdir -p "$D" && cp data/samples/pascal_part/*.txt "$D/"
  for sub in img ann obj; do for split in train val; do
    mkdir -p "$D/$sub/$split"
    for f in data/samples/pascal_part/$sub/$split/*; do
      b=$(basename "$f"); for k in 0 1 2 3 4 5 6 7 8 9; do cp "$f" "$D/$sub/$split/${b%.*}_$k.${b##*.}"; done
    done
  done; done
fi

# Models: the fp16 variants and the ViT-B/16 are made here (they are too large to carry).
M=/tmp/m/mobilenet_v2_imagenet.onnx; cp "$G/mobilenet_v2_imagenet.onnx" "$M"
python3 scripts/models/fp16.py "$M" --check 4 2>&1 | tee "$OUT/fp16_mobilenet.txt" | tee -a "$S"
V=/tmp/m/vit_base.onnx
[ -f "$V" ] || python3 scripts/models/vit.py --preset base --seed 0 --out "$V" > "$OUT/vit.txt" 2>&1
python3 scripts/models/fp16.py "$V" --check 2 2>&1 | tee "$OUT/fp16_vit.txt" | tee -a "$S"

ingest() { # name dataset model global-flags... [-- ingest-flags...]; prints the run's figures
  local name=$1 data=$2 model=$3; shift 3
  local global=() extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do global+=("$1"); shift; done
  [ $# -gt 0 ] && shift && extra=("$@")
  "$B" "${P[@]}" "${global[@]}" ingest --dataset "$data" --model "$model" --min-area 1 \
    --overwrite --out "/tmp/idx_$name" "${extra[@]}" > "$OUT/$name.txt" 2> "$OUT/$name.log"
  local rc=$?
  say "$name rc=$rc: $(grep -h '^indexed\|^encoder:' "$OUT/$name.txt" | tr '\n' ' ')"
  [ $rc -eq 0 ] || tail -3 "$OUT/$name.log" | tee -a "$S"
}
alone() { # name model extra...
  local name=$1 model=$2; shift 2
  say "$name: $("$B" "${P[@]}" "$@" encode-bench --model "$model" --regions 10240 2>"$OUT/$name.log" || tail -3 "$OUT/$name.log")"
}

say "== MobileNetV2 =="
ingest warmup "$D" "$M" --device cuda
alone mnv2_alone_fp32 "$M" --device cuda
alone mnv2_alone_fp16 "$M" --device cuda --precision fp16
PARTLENS_SESSIONS=1 alone mnv2_alone_fp16_1session "$M" --device cuda --precision fp16
ingest mnv2_fp32 "$D" "$M" --device cuda
ingest mnv2_fp16 "$D" "$M" --device cuda --precision fp16
PARTLENS_SESSIONS=1 ingest mnv2_fp16_1session "$D" "$M" --device cuda --precision fp16
PARTLENS_IO_BINDING=0 ingest mnv2_fp16_nobinding "$D" "$M" --device cuda --precision fp16
ingest mnv2_fp16_b512 "$D" "$M" --device cuda --precision fp16 -- --batch-size 512
ingest mnv2_cpu "$D" "$M" --device cpu

say "== ViT-B/16 =="
alone vit_alone_fp16 "$V" --device cuda --precision fp16
alone vit_alone_fp32 "$V" --device cuda
# CUDA graphs (ONNX Runtime's enable_cuda_graph): replaying one captured graph per batch needs
# fixed shapes and addresses, which encode-bench's repeated full batches have; an experiment,
# not a default (ingest's last batch of each segment is shorter).
PARTLENS_CUDA_OPTIONS=enable_cuda_graph=1 alone vit_alone_fp16_cudagraph "$V" --device cuda --precision fp16
PARTLENS_CUDA_OPTIONS=enable_cuda_graph=1 alone mnv2_alone_fp16_cudagraph "$M" --device cuda --precision fp16
ingest vit_fp16 "$D" "$V" --device cuda --precision fp16
ingest vit_fp32 "$D" "$V" --device cuda
ingest vit_cpu data/samples/pascal_part "$V" --device cpu
ingest vit_cuda_small data/samples/pascal_part "$V" --device cuda
PYTHONUNBUFFERED=1 python3 scripts/torch_vit_bench.py --onnx "$V" --images 10240 --batch 256 \
  --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt" | tee -a "$S"

python3 - "$S" "$OUT/torch.json" <<'PY' | tee -a "$S"
import glob, json, re, sys
import numpy as np

def rows(idx, f):
    return np.concatenate([np.load(p) for p in sorted(glob.glob(f"{idx}/segments/*/features/{f}.npy"))])

def cos(a, b, what):
    try:
        x, y = rows(a, "mean").astype(np.float64), rows(b, "mean").astype(np.float64)
    except Exception as e:  # a run above failed
        return print(f"{what}: not compared ({e})")
    c = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    print(f"{what}: {len(c)} regions, min cosine {c.min():.6f}, median {np.median(c):.6f}")

cos("/tmp/idx_mnv2_fp32", "/tmp/idx_mnv2_cpu", "mobilenet mean, cuda fp32 vs cpu fp32")
cos("/tmp/idx_mnv2_fp16", "/tmp/idx_mnv2_fp32", "mobilenet mean, cuda fp16 vs cuda fp32")
cos("/tmp/idx_vit_cuda_small", "/tmp/idx_vit_cpu", "vit-b mean, cuda fp32 vs cpu fp32")
cos("/tmp/idx_vit_fp16", "/tmp/idx_vit_fp32", "vit-b mean, cuda fp16 vs cuda fp32")
text = open(sys.argv[1]).read()
e2e = re.search(r"^vit_fp16 rc=0: indexed .*?\(([\d.]+) regions/s", text, re.M)
try:
    torch = json.load(open(sys.argv[2]))["images_per_second"]
except Exception:
    torch = None
if e2e and torch:
    r = float(e2e.group(1))
    print(f"ViT-B/16 fp16: partlens end to end {r:.1f} regions/s, PyTorch encoder alone "
          f"{torch:.1f} images/s, ratio {r / torch:.3f} (goal >= 1.0)")
PY
cp /tmp/idx_mnv2_fp16/manifest.json "$OUT/manifest_mnv2_fp16.json" 2>/dev/null
echo "summary in $S"
