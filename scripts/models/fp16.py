"""Write the float16 variant of a partlens ONNX model, for ``--precision fp16`` on CUDA.

Weights and compute become float16; the image input and every output stay float32, so
partlens feeds and reads the fp16 model exactly like the fp32 one (one Cast after the input
and one before each output, on the device). The conversion is onnxconverter-common's
``convert_float_to_float16`` (PyPI, installed by ``partlens setup``) with these choices:

* ``keep_io_types=True``: float32 at the graph's edges;
* ops kept in float32 (``--keep-fp32``, default ``ReduceMean,GlobalAveragePool``): the
  poolings that make the ``mean`` feature sum 49-196 values, where a float16 accumulator
  loses digits; they cost nothing next to the convolutions and matmuls;
* initializers whose values overflow float16 are clamped to +-65504 by the converter (their
  count is printed; a model that needs it is a model to check with ``--check``).

The model's ``partlens.spec`` gains ``"precision": "fp16"`` and ``"fp32": {"file",
"sha256"}`` naming the model it was made from. partlens uses that link both ways: ingest with
``--precision fp16 --model X.onnx`` loads ``X.fp16.onnx``; a query of an index built in fp16
may run its fp32 twin on CPU (the features agree to the cosine stated by ``--check``).

Usage::

    python fp16.py MODEL.onnx [--out MODEL.fp16.onnx] [--check N]

``--check N`` runs both models on N random inputs with onnxruntime (CPU; ONNX Runtime's CPU
provider has float16 kernels for few ops, so this uses onnx's reference evaluator when the CPU
session cannot be built) and prints the worst cosine per output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings

import numpy as np
import onnx

SPEC_KEY = "partlens.spec"
DEFAULT_KEEP_FP32 = "ReduceMean,GlobalAveragePool"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _props(model) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def default_out(path: str) -> str:
    """``model.onnx`` -> ``model.fp16.onnx`` (what ``--precision fp16`` looks for)."""
    stem = path[:-5] if path.endswith(".onnx") else path
    return stem + ".fp16.onnx"


def convert(path: str, out: str, keep_fp32: list[str]) -> dict:
    """Writes the fp16 variant of ``path`` to ``out``; returns its spec."""
    from onnxconverter_common import float16

    model = onnx.load(path)
    props = _props(model)
    if SPEC_KEY not in props:
        raise SystemExit(f"error: {path}: no {SPEC_KEY} metadata; convert the model with "
                         f"scripts/models/*.py first")
    spec = json.loads(props[SPEC_KEY])
    if spec.get("precision", "fp32") != "fp32":
        raise SystemExit(f"error: {path} is already {spec['precision']}")
    inputs = [i.name for i in model.graph.input]
    if spec["input"] not in inputs:
        raise SystemExit(f"error: {path}: spec input {spec['input']!r} is not a graph input")
    big = sum(int(np.any(np.abs(onnx.numpy_helper.to_array(t)) > 65504))
              for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    with warnings.catch_warnings(record=True) as caught:
        # One warning per value below float16's normal range (1e-7 .. 6e-8), rounded to
        # +-1e-7 by the converter: counted, not printed one by one.
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=keep_fp32, disable_shape_infer=False)
    tiny = sum("truncated" in str(w.message) for w in caught)
    _float32_outputs(half)
    spec = dict(spec, precision="fp16",
                fp32={"file": os.path.basename(path), "sha256": _sha256(path)})
    kept = [p for p in half.metadata_props if p.key != SPEC_KEY]
    del half.metadata_props[:]
    half.metadata_props.extend(kept)
    onnx.helper.set_model_props(half, {**_props(half), SPEC_KEY: json.dumps(spec)})
    onnx.checker.check_model(half)
    onnx.save(half, out)
    if big:
        print(f"note: {big} initializers had values beyond float16's range (clamped)",
              file=sys.stderr)
    if tiny:
        print(f"note: {tiny} tiny weight values were rounded to float16's smallest (1e-7)",
              file=sys.stderr)
    return spec


def _float32_outputs(model) -> None:
    """Makes every graph output float32 again. ``keep_io_types`` misses outputs written by an
    op kept in float32 (``--keep-fp32``): the converter casts them to float16 for consumers
    that no longer exist. Such a cast is turned back into float32 when nothing else reads its
    output; otherwise a Cast to float32 is added after it."""
    from onnx import TensorProto as T, helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers = {i for n in g.node for i in n.input}
    for out in g.output:
        tt = out.type.tensor_type
        if tt.elem_type != T.FLOAT16:
            continue
        node = producer.get(out.name)
        to = next((a for a in node.attribute if a.name == "to"), None) if node else None
        if node is not None and node.op_type == "Cast" and to is not None \
                and out.name not in readers:
            to.i = T.FLOAT
        elif node is not None:
            half_name = out.name + "_fp16"
            node.output[list(node.output).index(out.name)] = half_name
            for n in g.node:
                for k, i in enumerate(n.input):
                    if i == out.name:
                        n.input[k] = half_name
            g.node.append(helper.make_node("Cast", [half_name], [out.name], to=T.FLOAT,
                                           name=out.name + "_to_fp32"))
        tt.elem_type = T.FLOAT


def _run(path: str, feeds: dict, outputs: list[str]) -> dict:
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, s.run(outputs, feeds)))
    except Exception as e:  # noqa: BLE001 - no CPU kernel for some float16 op
        from onnx.reference import ReferenceEvaluator

        print(f"note: onnxruntime CPU cannot run {os.path.basename(path)} "
              f"({str(e).splitlines()[0][:120]}); using onnx.reference", file=sys.stderr)
        ref = ReferenceEvaluator(path)
        return dict(zip(outputs, ref.run(outputs, feeds)))


def check(fp32: str, fp16: str, n: int, seed: int = 0) -> dict:
    """Worst per-input cosine between the two models' outputs on ``n`` random inputs."""
    spec = json.loads(_props(onnx.load(fp32, load_external_data=False))[SPEC_KEY])
    h, w = spec["input_size"]
    x = np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)
    outs = [o for o in spec["outputs"].values() if o]
    a = _run(fp32, {spec["input"]: x}, outs)
    b = _run(fp16, {spec["input"]: x}, outs)
    worst = {}
    for o in outs:
        if b[o].dtype != np.float32:
            raise SystemExit(f"error: output {o} of the fp16 model is {b[o].dtype}, not float32")
        u = a[o].reshape(n, -1).astype(np.float64)
        v = b[o].reshape(n, -1).astype(np.float64)
        cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-30)
        worst[o] = float(cos.min())
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an fp32 partlens ONNX model")
    ap.add_argument("--out", help="output path (default: MODEL.fp16.onnx beside MODEL)")
    ap.add_argument("--keep-fp32", default=DEFAULT_KEEP_FP32,
                    help=f"comma-separated op types left in float32 (default {DEFAULT_KEEP_FP32})")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="compare the two models on N random inputs and print worst cosines")
    args = ap.parse_args(argv)
    out = args.out or default_out(args.model)
    keep = [s for s in args.keep_fp32.split(",") if s]
    convert(args.model, out, keep)
    print(f"wrote {out} ({os.path.getsize(out):,} bytes; fp32 {os.path.getsize(args.model):,})")
    if args.check:
        for o, c in check(args.model, out, args.check).items():
            print(f"fp16 vs fp32 {o}: worst cosine over {args.check} inputs {c:.7f} "
                  f"(1 - cosine {1 - c:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
