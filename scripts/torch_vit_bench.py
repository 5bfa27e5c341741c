"""PyTorch's speed on the ViT-B/16 that partlens runs, for the side-by-side in gpu_check.sh.

The weights are the ones ``scripts/models/vit.py --preset base --seed S`` writes to ONNX: the
same seeded ``random_state_dict`` (timm layout), loaded into timm's ``VisionTransformer``
(strict). Before timing, the script checks that PyTorch and the ONNX model agree (ONNX
Runtime on CPU, 2 images, cosine per output).

Timed: fp16 autocast, channels-last, inference mode, batch 256, on pre-made tensors already
on the GPU; per batch the forward pass and the two features partlens stores (cls, mean of the
patch tokens). The figure is images per second; warm-up batches are not timed.

Usage::

    python3 torch_vit_bench.py --onnx vit_base.onnx [--images 10240] [--batch 256] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "models"))
import vit  # noqa: E402


def torch_vit(sd: dict, preset: dict):
    import timm
    import torch

    model = timm.models.vision_transformer.VisionTransformer(
        img_size=preset["img_size"], patch_size=preset["patch"], embed_dim=preset["dim"],
        depth=preset["depth"], num_heads=preset["heads"], num_classes=0, global_pool="token")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: state dict does not fit timm's ViT: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()


def features(model, x):
    tokens = model.forward_features(x)
    return tokens[:, 0], tokens[:, 1:].mean(1)


def check_against_onnx(model, onnx_path: str, size: int) -> dict:
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 4
    s = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    cls_o, tok_o = s.run(["cls", "patch_tokens"], {"pixel_values": x})
    with torch.inference_mode():
        cls_t, mean_t = (t.numpy() for t in features(model, torch.from_numpy(x)))

    def cos(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    return {"cls": cos(cls_o, cls_t), "mean": cos(tok_o.mean(1), mean_t)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", help="the ONNX written by vit.py --preset base (for the check)")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=10240)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)

    import torch

    p = vit.PRESETS[args.preset]
    sd = vit.random_state_dict(p["depth"], p["dim"], p["heads"], p["patch"], p["img_size"],
                               seed=args.seed)
    model = torch_vit(sd, p)
    out = {"preset": args.preset, "batch": args.batch, "torch": torch.__version__}
    if args.onnx:
        out["agreement_min_cosine"] = check_against_onnx(model, args.onnx, p["img_size"])
        print(f"pytorch vs onnx (fp32, CPU): min cosine {out['agreement_min_cosine']}")
    dev = torch.device("cuda")
    model = model.to(dev).to(memory_format=torch.channels_last)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((args.batch, 3, p["img_size"], p["img_size"]), device=dev,
                    generator=gen).contiguous(memory_format=torch.channels_last)
    batches = -(-args.images // args.batch)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):
            features(model, x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(batches):
            cls, mean = features(model, x)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t
    images = batches * args.batch
    out.update(images=images, seconds=secs, images_per_second=images / secs,
               gpu=torch.cuda.get_device_name(0))
    print(f"pytorch {torch.__version__} ViT-{args.preset}/16 fp16 autocast, channels-last, "
          f"batch {args.batch}: {images} images in {secs:.2f} s = {images / secs:.1f} images/s "
          f"({out['gpu']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
