#!/usr/bin/env bash
# Create (idempotently) the Python venv used by benches/ann/compare.py and
# print the venv's python path as the LAST line of stdout (everything else
# goes to stderr, so callers can do: PY=$(bash setup_venv.sh | tail -n1)).
#
#   PARTLENS_BENCH_VENV  venv location (default ~/.cache/partlens/bench-venv)
#   PARTLENS_BENCH_PYTHON  interpreter used to create it (default python3)
#
# Pinned versions (checked on PyPI; numpy 2.4 needs Python >= 3.11,
# faiss-cpu 1.15.1 needs numpy >= 1.25 and ships one abi3 wheel with
# runtime SIMD dispatch).
#
# hnswlib 0.8.0 is sdist-only on PyPI, so it is compiled here with g++.
# We build it WITHOUT build isolation against the pinned numpy/pybind11
# already in the venv (reproducible, no surprise pybind11/numpy versions),
# and we deliberately do NOT set HNSWLIB_NO_NATIVE: hnswlib's setup.py then
# compiles with `-O3 -march=native -fopenmp`, i.e. for this machine's CPU.
# On the dev machine (Xeon with AVX-512F/BW/VL/VNNI/FP16) that means the
# AVX-512 inner-product kernels (space_ip.h USE_AVX512) are compiled in and
# selected at runtime for dims that are multiples of 16 (768, 1280 are).
# That is the fair comparison against a Rust build with target-cpu=native and
# faiss's own runtime dispatch. Because the build is -march=native, the venv
# is NOT portable to another CPU model: the marker includes the CPU model
# name, so a different CPU triggers a rebuild.
set -euo pipefail

VENV="${PARTLENS_BENCH_VENV:-$HOME/.cache/partlens/bench-venv}"
PY_BOOT="${PARTLENS_BENCH_PYTHON:-python3}"

NUMPY_VER=2.4.6
PYBIND11_VER=3.1.0
SETUPTOOLS_VER=80.9.0
HNSWLIB_VER=0.8.0
FAISS_VER=1.15.1

cpu_model="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
marker_content="numpy==${NUMPY_VER} pybind11==${PYBIND11_VER} setuptools==${SETUPTOOLS_VER} hnswlib==${HNSWLIB_VER} faiss-cpu==${FAISS_VER} native=${cpu_model}"
MARKER="$VENV/.partlens-bench-installed"

log() { echo "[setup_venv] $*" >&2; }

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$marker_content" ]]; then
    log "venv up to date: $VENV"
    echo "$VENV/bin/python"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV with $PY_BOOT"
    mkdir -p "$(dirname "$VENV")"
    "$PY_BOOT" -m venv "$VENV" >&2
fi
rm -f "$MARKER"

PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --no-input)

log "installing build deps + numpy"
"${PIP[@]}" install -q "numpy==${NUMPY_VER}" "pybind11==${PYBIND11_VER}" \
    "setuptools==${SETUPTOOLS_VER}" wheel >&2

if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
    log "ERROR: no C++ compiler found (hnswlib ${HNSWLIB_VER} is built from source); install g++"
    exit 1
fi

log "building hnswlib==${HNSWLIB_VER} from sdist (-O3 -march=native), this takes ~1 min"
# --no-binary forces the source build even if a wheel appears on PyPI later,
# --no-cache-dir so a -march=native wheel cached from another CPU is never reused,
# --force-reinstall so a marker mismatch (e.g. venv copied to another CPU) rebuilds.
env -u HNSWLIB_NO_NATIVE "${PIP[@]}" install -q --no-build-isolation --no-cache-dir \
    --force-reinstall --no-deps --no-binary hnswlib "hnswlib==${HNSWLIB_VER}" >&2

log "installing faiss-cpu==${FAISS_VER}"
"${PIP[@]}" install -q "faiss-cpu==${FAISS_VER}" "numpy==${NUMPY_VER}" >&2

"$PY" - >&2 <<'EOF'
import numpy, hnswlib, faiss
print("numpy", numpy.__version__, "| faiss", faiss.__version__,
      "| faiss compile options:", faiss.get_compile_options())
p = hnswlib.Index(space="ip", dim=16); p.init_index(max_elements=1)
print("hnswlib import ok")
EOF

echo "$marker_content" > "$MARKER"
echo "$PY"
