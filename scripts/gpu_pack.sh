#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_check.sh needs on a GPU machine that has no
# network (PyPI is reachable here):
#   gpu-check/ort.tar.xz.partNN   libonnxruntime.so.1.31.1 + providers_{shared,cuda}.so from the
#                                 onnxruntime-gpu 1.31.1 wheel, tar | xz, in 60 MB parts
#   gpu-check/partlens            this repository's release build
#   gpu-check/mobilenet_v2_imagenet.onnx   the default model (`partlens setup`)
#   .whl/onnxconverter_common-*.whl        for scripts/models/fp16.py (pure Python)
# Both folders are git-ignored. A device call carries at most 64 MB, so the parts travel one
# per call and are staged in /tmp/ort-parts there (seen here: parts 00-02 of 60 MB and a last
# one of 6 MB, so 3 staging calls; the last part travels with the check):
#   calls 1-3:  carry ["gpu-check/ort.tar.xz.partNN"]
#               command: mkdir -p /tmp/ort-parts && cp gpu-check/ort.tar.xz.part* /tmp/ort-parts/
#   call 4:     carry ["gpu-check/ort.tar.xz.part03", "gpu-check/partlens",
#                      "gpu-check/mobilenet_v2_imagenet.onnx", ".whl"]
#               command: cp gpu-check/ort.tar.xz.part* /tmp/ort-parts/ && bash scripts/gpu_check.sh
# (the machine stays warm 30 s after a call: make the calls back to back, then give it back).
set -euo pipefail
cd "$(dirname "$0")/.."
G=gpu-check
mkdir -p "$G" .whl
if [ ! -f "$G/ort.tar.xz.part00" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$tmp" onnxruntime-gpu==1.31.1
  (cd "$tmp" && unzip -q -j onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime*.so*' -d libs)
  tar -C "$tmp/libs" -cf - . | xz -T0 -6 | split -b 60M -d - "$G/ort.tar.xz.part"
  rm -rf "$tmp"
fi
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl onnxconverter-common==1.16.0
cargo build --release
cp "${CARGO_TARGET_DIR:-target}/release/partlens" "$G/partlens"
cp "$("$G/partlens" setup 2>/dev/null | sed -n 's/^default model: *//p')" "$G/"
ls -la "$G" .whl
