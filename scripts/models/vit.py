"""Write a Vision Transformer to ONNX with numpy + ``onnx`` only.

No torch: weights come either from a seeded random init (for tests and
benchmarks) or from a checkpoint read by the sibling ``pth.py`` (imported
lazily, only when ``--weights`` is given). ``--method`` reads the official
published checkpoints of the seven pretraining methods of Zhu et al. 2023
(DeiT, MoCo v3, DINO, BEiT, MAE, CAE, iBOT); their layout tables live in the
sibling ``methods.py`` (imported lazily, only with ``--method``).

Graph (opset 17, IR 8)
----------------------
``pixel_values`` float32 ``[batch, 3, H, W]`` -> Conv(stride p) patch embed ->
``[B, N, D]`` -> concat cls token -> + pos_embed (if the model has one) ->
pre-norm blocks (``x + g1 * Attn(LN1(x))``, ``x + g2 * MLP(LN2(x))``, g = layer
scale or 1; softmax attention ``softmax(q k^T * head_dim**-0.5 + B_rel)`` where
``B_rel`` is a relative position bias baked as a ``[heads, 1+N, 1+N]``
constant, exact erf GELU) -> final LayerNorm. Outputs:

* ``cls`` ``[batch, D]``: normed token 0 (the class token after the final norm);
* ``patch_tokens`` ``[batch, N, D]``: normed tokens 1..N (row-major patch grid);
* ``projection`` ``[batch, P]``: only when a head is present (see below); it
  reads ``cls`` (or ``pooled`` for global-pool models);
* ``pooled`` ``[batch, D]``: only for global-pool checkpoints (``fc_norm``
  without ``norm``, e.g. MAE/BEiT fine-tuned): ``fc_norm(mean(tokens 1..N))``,
  which is exactly timm's ``global_pool='avg'`` feature.

The spec JSON (``partlens.spec``; with ``--method`` it has ``"method"``) and
provenance (``partlens.source``: file, sha256, wrapper, prefix, what was
ignored, notes) are stored in ``model.metadata_props``.

--method: the seven pretraining methods
---------------------------------------
``--method deit|mocov3|dino|beit|mae|cae|ibot`` reads the file as published by
the method's official code (read from facebookresearch/deit, moco-v3, dino,
mae; microsoft/unilm beit; Atten4Vis/CAE and lxtGH/CAE; bytedance/ibot). The
wrapper entry and the encoder prefix are found automatically (the first
published layout that fits; ``--key`` overrides the wrapper), the encoder is
checked key by key in the official module order, and everything that is not
the encoder or its projection head is ignored and listed in the notes.
All seven use LayerNorm eps 1e-6 (``norm_layer=partial(nn.LayerNorm,
eps=1e-6)``); head BatchNorms use torch's 1e-5. The spec's mean/std default to
the method's pretraining normalisation (``--mean``/``--std`` override).

========  ====================================  ==========================================
method    published file: wrapper / prefix      ignored
========  ====================================  ==========================================
deit      ``{'model'}`` / none                  ``head.*`` (ImageNet classifier)
mocov3    ``{'state_dict'}`` /                  ``module.momentum_encoder.*``,
          ``module.base_encoder.``              ``module.predictor.*``, epoch/arch/optimizer
dino      full: ``{'teacher'}`` / ``backbone.``  ``head.last_layer.*`` (prototypes),
          backbone-only release: flat / none    ``student``, optimizer, ...
ibot      full: ``{'teacher'}`` / ``backbone.``  ``head.last_layer(2).*``, ``head.last_norm*``,
          ``checkpoint_teacher.pth``:           ``masked_embed`` (student), ``student``, ...
          ``{'state_dict'}`` / none
mae       ``{'model'}`` / none                  ``mask_token``, ``decoder_*`` (visualize ckpt)
beit      ``{'model'}`` (or ``'module'``) / none ``mask_token``, ``lm_head.*``
cae       ``{'model'}`` / ``encoder.``          ``teacher.*``/``alignment_encoder.*``,
                                                ``pretext_neck.*``/``regresser.*``/``decoder.*``,
                                                ``mask_token``, ``rd_pos_embed``, ``encoder_to_*``
========  ====================================  ==========================================

Features checked per method: DeiT/DINO/iBOT learned ``pos_embed`` [1, 1+N, D];
MoCo v3/CAE/MAE the fixed 2-D sin-cos ``pos_embed`` as stored (a warning if it
is not the official formula - MoCo v3/CAE put the row frequencies first, MAE
the column ones); BEiT no absolute pos_embed (accepted if present:
``use_abs_pos_emb``) but a relative position bias. Fused ``attn.qkv.bias``
(DeiT, MoCo v3, DINO, iBOT, MAE) or BEiT/CAE's ``attn.q_bias`` + ``v_bias``
(k bias zero). Layer scale ``gamma_1``/``gamma_2`` (BEiT, CAE, iBOT's
``init_values`` option; all blocks or none). Relative position bias (BEiT;
CAE optional): a shared ``rel_pos_bias.relative_position_bias_table`` and/or
per-block ``blocks.i.attn.relative_position_bias_table`` ``[(2w-1)^2+3,
heads]``, gathered with the official ``relative_position_index`` (computed
here; a stored index buffer must agree) and, when both exist, summed (as the
official attention adds both). The tables fix the patch grid: another
``--img-size`` is refused (BEiT's resize, a scipy cubic interpolation on a
geometric grid, is not implemented). Heads default to the method's width
table (MoCo v3 ViT-S and CAE ViT-Ti/S use 12 heads) or to the relative
table's columns. Distilled DeiT (``dist_token``) is refused.

``projection`` per method (kept by default, ``--drop-head`` drops it; the
head reads the cls token after the final norm, as every official forward):

* mocov3: the base encoder's projector ``head.{0..7}`` - 3 x Linear (no bias)
  each followed by BatchNorm1d (eval mode, running stats, folded into the
  linear), ReLU between, the last BN ``affine=False``; 4096 hidden, 256 out.
* dino / ibot: the teacher's ``head.mlp`` (Linear-GELU-Linear-GELU-Linear,
  2048 hidden): the raw 256-d bottleneck BEFORE the L2 normalisation and
  before ``last_layer`` (weight-normed prototypes, dropped). The backbone-only
  releases (DINO ``*_pretrain.pth``, iBOT ``checkpoint_teacher.pth``) hold no
  head, hence no ``projection``.
* deit: none - its ``head`` is the supervised ImageNet classifier;
  mae / beit / cae: none - they pretrain by reconstruction (pixel decoder,
  ``lm_head`` visual-token logits, regressor + decoder) and have no
  projection head.

Pixel mean/std (pretraining): ImageNet (0.485, 0.456, 0.406) / (0.229, 0.224,
0.225) for deit, mocov3, dino, ibot, mae, cae (CAE's scripts pass
``--imagenet_default_mean_and_std``); BEiT (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5),
its default for the released ImageNet-22k pretraining.

A layout that does not fit is refused naming the first mismatching key as the
file spells it: ``error: --method beit: missing 'blocks.1.attn.q_bias'``,
``error: --method mocov3: 'module.base_encoder.blocks.0.mlp.fc1.weight' has
shape [3072, 512], expected [3072, 768]``, ``... unexpected 'head.weight'``,
``... missing 'state_dict'`` (exit status 1, message on stderr). Encoders of
the same architecture (a DINO backbone and a DeiT without classifier) cannot
be told apart.

Random weights with ``--method`` (``--preset base`` = ViT-B/16) are written in
that method's published layout, with the official head widths (MoCo v3
4096/256, DINO 2048/256/65536 prototypes, iBOT 2048/256/8192), then converted
through the same path as a file.

Accepted state-dict layouts without --method
--------------------------------------------
timm ``VisionTransformer`` key names (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2}.*``, ``norm.*``), plus these variants:

* prefixes ``module.``, ``backbone.``, ``encoder.``, ``model.`` are stripped
  (repeatedly, per key);
* layer scale: ``blocks.{i}.ls1.gamma``/``ls2.gamma`` (timm, DINOv2) or
  ``blocks.{i}.gamma_1``/``gamma_2`` (BEiT/CAE) -> residual branch * gamma;
* ``blocks.{i}.attn.q_bias`` + ``v_bias`` (BEiT/CAE, no k bias) -> qkv bias;
* relative position bias tables (shared or per block, as above); then
  ``pos_embed`` may be absent;
* ``pos_embed`` with the cls slot (``[1, 1+g*g, D]``) or without it
  (``no_embed_class``, DeiT-III style ``[1, g*g, D]``: added to patches only);
  a grid that differs from ``img_size / patch`` is resampled at conversion time
  with antialiased bicubic (PIL-style, a=-0.5) - what timm's
  ``resample_abs_pos_embed`` does;
* ``norm_pre.*`` (LayerNorm after the pos embed, CLIP-style);
* ``fc_norm.*`` without ``norm.*`` (global-pool models): ``fc_norm`` is used
  as the per-token final norm for ``cls``/``patch_tokens`` (an approximation -
  the original only applies it to the pooled vector) and the exact pooled
  feature is exported as ``pooled``. If both exist, ``fc_norm`` is dropped;
* heads (only kept on request, ``--keep-head``): ``head.weight``/``bias``
  (single linear, e.g. a classifier), a DINO projector ``head.mlp.{k}.*``
  (GELU between) or a MoCo-style ``head.{k}.*`` (ReLU between), each module a
  Linear or a BatchNorm1d (folded). ``head.last_layer.*`` (DINO prototypes)
  is dropped; the projection is the raw (not L2-normalised) bottleneck.

Refused with a clear message: distillation/register tokens, qk-norm or any
other unknown per-block parameter, SwiGLU MLPs (missing ``mlp.fc1``).

Run ``python vit.py --help`` for the CLI, ``--selftest`` for numpy-vs-
onnxruntime checks (with ``methods.py`` present: every method's layout,
variants and refusals), ``--bench`` for a CPU throughput measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

OPSET = 17
IR_VERSION = 8
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

PRESETS = {
    # name: (img_size, patch, dim, depth, heads)
    "tiny": dict(img_size=224, patch=16, dim=64, depth=2, heads=2),
    "small": dict(img_size=224, patch=16, dim=384, depth=12, heads=6),
    "base": dict(img_size=224, patch=16, dim=768, depth=12, heads=12),
}

# Default head counts of the standard timm/DINO/MAE widths, used by the CLI
# when --heads is not given (build() itself always requires heads).
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1536: 24}

STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")

BLOCK_REQUIRED = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias",
)
BLOCK_OPTIONAL = ("attn.qkv.bias", "ls1.gamma", "ls2.gamma", "attn.relative_position_bias_table")


class ConversionError(ValueError):
    """The state dict cannot be converted (missing or unsupported parameters)."""


# --------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------


def _trunc_normal(rng: np.random.Generator, shape, std=0.02) -> np.ndarray:
    """Normal(0, std) truncated at +-2 std (resampling outliers), float32."""
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2.0
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2.0
    return (x * std).astype(np.float32)


def random_state_dict(depth, dim, heads, patch, img_size, mlp_ratio=4, proj_dim=None,
                      seed=0) -> dict[str, np.ndarray]:
    """A timm ``VisionTransformer`` state dict with timm-like random init.

    Weights: truncated normal std 0.02; biases: zeros; norm weights: ones;
    ``cls_token``: normal std 1e-6 (as timm). With ``proj_dim`` a DINO-style
    2-layer projector is added: ``head.mlp.0`` (D -> 2D), GELU,
    ``head.mlp.2`` (2D -> proj_dim).
    """
    if dim % heads:
        raise ConversionError(f"dim {dim} is not divisible by heads {heads}")
    if img_size % patch:
        raise ConversionError(f"img_size {img_size} is not a multiple of patch {patch}")
    rng = np.random.default_rng(seed)
    n = (img_size // patch) ** 2
    hidden = int(dim * mlp_ratio)
    zeros = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    ones = lambda *s: np.ones(s, np.float32)  # noqa: E731
    sd = {
        "cls_token": (rng.standard_normal((1, 1, dim)) * 1e-6).astype(np.float32),
        "pos_embed": _trunc_normal(rng, (1, 1 + n, dim)),
        "patch_embed.proj.weight": _trunc_normal(rng, (dim, 3, patch, patch)),
        "patch_embed.proj.bias": zeros(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": ones(dim), b + "norm1.bias": zeros(dim),
            b + "attn.qkv.weight": _trunc_normal(rng, (3 * dim, dim)),
            b + "attn.qkv.bias": zeros(3 * dim),
            b + "attn.proj.weight": _trunc_normal(rng, (dim, dim)),
            b + "attn.proj.bias": zeros(dim),
            b + "norm2.weight": ones(dim), b + "norm2.bias": zeros(dim),
            b + "mlp.fc1.weight": _trunc_normal(rng, (hidden, dim)),
            b + "mlp.fc1.bias": zeros(hidden),
            b + "mlp.fc2.weight": _trunc_normal(rng, (dim, hidden)),
            b + "mlp.fc2.bias": zeros(dim),
        })
    sd["norm.weight"], sd["norm.bias"] = ones(dim), zeros(dim)
    if proj_dim:
        sd.update({
            "head.mlp.0.weight": _trunc_normal(rng, (2 * dim, dim)),
            "head.mlp.0.bias": zeros(2 * dim),
            "head.mlp.2.weight": _trunc_normal(rng, (proj_dim, 2 * dim)),
            "head.mlp.2.bias": zeros(proj_dim),
        })
    return sd


# --------------------------------------------------------------------------
# Checkpoint normalisation
# --------------------------------------------------------------------------


def _strip_prefixes(sd: dict, notes: list) -> dict:
    """Remove ``module.``/``backbone.``/... prefixes (repeatedly, per key)."""
    out, stripped = {}, set()
    for k, v in sd.items():
        nk = k
        while True:
            p = next((p for p in STRIP_PREFIXES if nk.startswith(p)), None)
            if p is None:
                break
            stripped.add(p)
            nk = nk[len(p):]
        if nk in out:
            raise ConversionError(f"keys collide after prefix stripping: {k!r} -> {nk!r}")
        out[nk] = v
    if stripped:
        notes.append(f"stripped prefixes {sorted(stripped)}")
    return out


def _refuse_unsupported(sd: dict) -> None:
    """Raise for architectures this converter deliberately does not handle."""
    for tok, what in (("dist_token", "DeiT distillation token"),
                      ("reg_token", "register tokens"), ("register_tokens", "register tokens")):
        if tok in sd:
            raise ConversionError(f"{what} ({tok!r}) are not supported")


REL_TABLE = "relative_position_bias_table"
REL_INDEX = "relative_position_index"
_REL_OWNER = re.compile(r"(rel_pos_bias\.|blocks\.\d+\.attn\.)")


def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """BEiT's ``relative_position_index`` ``[1+N, 1+N]`` for a ``wh x ww`` patch grid.

    The official computation (``RelativePositionBias`` in unilm/beit
    ``modeling_finetune.py``): patch pair (i, j) with row/col offsets (dy, dx)
    maps to ``(dy + wh-1) * (2ww-1) + (dx + ww-1)``; row 0 (cls -> token) is
    ``R-3``, column 0 (token -> cls) ``R-2``, (0, 0) ``R-1``, where
    ``R = (2wh-1)(2ww-1) + 3`` is the number of table rows.
    """
    rows, cols = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])                      # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)   # [N, N, 2]
    rel = rel + np.array([wh - 1, ww - 1])
    n_rel = (2 * wh - 1) * (2 * ww - 1) + 3
    idx = np.zeros((wh * ww + 1,) * 2, np.int64)
    idx[1:, 1:] = rel[:, :, 0] * (2 * ww - 1) + rel[:, :, 1]
    idx[0, 0:] = n_rel - 3
    idx[0:, 0] = n_rel - 2
    idx[0, 0] = n_rel - 1
    return idx


def rel_window(rows: int) -> int | None:
    """Square window w with ``(2w-1)**2 + 3 == rows``, or None."""
    s = math.isqrt(max(rows - 3, 0))
    return (s + 1) // 2 if s * s == rows - 3 and s % 2 == 1 else None


def rel_pos_bias(table: np.ndarray, window: int) -> np.ndarray:
    """Gather a ``[R, heads]`` table into the ``[heads, 1+N, 1+N]`` attention bias."""
    idx = relative_position_index(window, window)
    t = idx.shape[0]
    return table[idx.reshape(-1)].reshape(t, t, -1).transpose(2, 0, 1).astype(np.float32)


def _check_rel_pos(sd: dict, notes: list) -> dict:
    """Validate relative position bias tables; check and drop index buffers."""
    out = dict(sd)
    tables = [k for k in out if k.endswith(REL_TABLE)]
    windows = set()
    for k in tables:
        owner = k[: -len(REL_TABLE)]
        if not _REL_OWNER.fullmatch(owner):
            raise ConversionError(f"unsupported relative position table {k!r} (accepted: "
                                  f"rel_pos_bias.{REL_TABLE} or blocks.i.attn.{REL_TABLE})")
        t = out[k]
        w = rel_window(int(t.shape[0])) if t.ndim == 2 else None
        if w is None:
            raise ConversionError(f"{k!r} has shape {list(t.shape)}; expected "
                                  f"[(2w-1)^2+3, heads] for a square w x w patch grid")
        windows.add((w, int(t.shape[1])))
    if len(windows) > 1:
        raise ConversionError(f"relative position tables disagree on (window, heads): "
                              f"{sorted(windows)}")
    checked = 0
    for k in [k for k in out if k.endswith(REL_INDEX)]:
        owner = k[: -len(REL_INDEX)]
        if owner + REL_TABLE not in out:
            raise ConversionError(f"{k!r} has no matching {owner + REL_TABLE!r}")
        w = rel_window(int(out[owner + REL_TABLE].shape[0]))
        want = relative_position_index(w, w)
        got = np.asarray(out.pop(k))
        if got.shape != want.shape or not np.array_equal(got.astype(np.int64), want):
            raise ConversionError(f"{k!r} (shape {list(got.shape)}) disagrees with the official "
                                  f"relative_position_index for a {w}x{w} grid")
        checked += 1
    if tables:
        (w, h), = windows
        notes.append(f"relative position bias: {len(tables)} table(s) for a {w}x{w} grid, "
                     f"{h} heads" + (f"; {checked} relative_position_index buffer(s) match "
                                     f"the official computation" if checked else ""))
    return out


def _alias_block_keys(sd: dict, notes: list) -> dict:
    """Map BEiT/CAE block names onto timm ones (layer scale, q/v bias)."""
    out = dict(sd)
    n_gamma = n_qv = 0
    for k in list(out):
        m = re.fullmatch(r"blocks\.(\d+)\.gamma_([12])", k)
        if m:
            out[f"blocks.{m[1]}.ls{m[2]}.gamma"] = out.pop(k)
            n_gamma += 1
    for k in list(out):
        m = re.fullmatch(r"blocks\.(\d+)\.attn\.q_bias", k)
        if not m:
            continue
        pre = f"blocks.{m[1]}.attn."
        q = out.pop(k)
        v = out.pop(pre + "v_bias", None)
        if v is None:
            raise ConversionError(f"{k!r} present but {pre}v_bias missing")
        if pre + "qkv.bias" in out:
            raise ConversionError(f"{pre}: both q_bias/v_bias and qkv.bias present")
        out[pre + "qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
        n_qv += 1
    if n_gamma:
        notes.append(f"mapped {n_gamma} BEiT-style gamma_1/gamma_2 to layer scale")
    if n_qv:
        notes.append(f"built qkv bias from q_bias/v_bias in {n_qv} blocks (k bias = 0)")
    return out


def _select_final_norm(sd: dict, notes: list) -> dict:
    """Keep ``norm``; fall back to ``fc_norm`` (global-pool models) if absent."""
    out = dict(sd)
    has_norm = "norm.weight" in out
    fc = [k for k in out if k.startswith("fc_norm.")]
    if fc and has_norm:
        for k in fc:
            del out[k]
        notes.append("dropped fc_norm (norm is present)")
    elif fc:
        notes.append("no 'norm' but 'fc_norm' (global-pool checkpoint): using fc_norm as the "
                     "per-token final norm for cls/patch_tokens (approximation) and exporting "
                     "the exact pooled feature as 'pooled'")
    return out


def _select_head(sd: dict, keep_head: bool, notes: list) -> dict:
    """Drop ``head.*`` unless asked to keep it; always drop DINO prototypes."""
    out = dict(sd)
    head = [k for k in out if k.startswith("head.")]
    if not head:
        return out
    if not keep_head:
        for k in head:
            del out[k]
        notes.append(f"dropped {len(head)} head.* tensors (use --keep-head for a projection)")
        return out
    last = [k for k in head if k.startswith("head.last_layer.")]
    for k in last:
        del out[k]
    if last:
        notes.append("dropped head.last_layer.* (DINO prototypes); projection = bottleneck")
    return out


_DROPPABLE = (
    re.compile(r"mask_token"), re.compile(r"decoder.*"), re.compile(r"pre_logits\..*"),
    re.compile(r"head_dist\..*"), re.compile(r"head_drop\..*"),
)


def _drop_unused(sd: dict, notes: list) -> dict:
    """Drop known-unused tensors (MAE decoder, mask token, pre-logits, ...)."""
    out = {}
    dropped = []
    for k, v in sd.items():
        if any(p.fullmatch(k) for p in _DROPPABLE):
            dropped.append(k)
        else:
            out[k] = v
    if dropped:
        notes.append(f"dropped {len(dropped)} unused tensors (e.g. {dropped[0]!r})")
    return out


def canonicalize(sd: dict, keep_head: bool = True, notes: list | None = None) -> dict:
    """Normalise a checkpoint's state dict to the timm layout ``build`` uses.

    Idempotent. ``notes`` (if given) receives human-readable lines about what
    was stripped, mapped or dropped. Raises :class:`ConversionError` for
    unsupported architectures.
    """
    notes = [] if notes is None else notes
    sd = {k: (np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
              else np.asarray(v)) for k, v in sd.items()}
    sd = _strip_prefixes(sd, notes)
    _refuse_unsupported(sd)
    sd = _check_rel_pos(sd, notes)
    sd = _alias_block_keys(sd, notes)
    sd = _select_final_norm(sd, notes)
    sd = _select_head(sd, keep_head, notes)
    sd = _drop_unused(sd, notes)
    return sd


# --------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------


@dataclass
class Arch:
    """What ``build`` needs to know, inferred from a canonical state dict."""

    depth: int
    dim: int
    patch: int
    heads: int
    mlp_hidden: int
    pos_has_cls: bool
    pos_grid: int | None  # None: no absolute pos_embed (BEiT pretraining)
    final_norm: str  # "norm" or "fc_norm"
    norm_pre: bool
    layer_scale: bool
    head: list = field(default_factory=list)  # head ops, see _head_ops
    rel_window: int | None = None  # patch grid of the relative position tables
    rel_shared: bool = False  # rel_pos_bias.relative_position_bias_table
    rel_layers: bool = False  # blocks.i.attn.relative_position_bias_table

    @property
    def pooled(self) -> bool:
        return self.final_norm == "fc_norm"

    @property
    def proj_dim(self) -> int | None:
        dims = [op["out"] for op in self.head if op["kind"] == "linear"]
        return dims[-1] if dims else None


BN_EPS = 1e-5  # torch.nn.BatchNorm1d default (MoCo v3 / DINO use_bn heads)
HEAD_ACTS = ("gelu", "relu")
_BN_PARAMS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _head_ops(sd: dict, dim: int, act: str | None = None, name=lambda k: k) -> list:
    """Parse ``head.*`` into ops applied to the normed cls token, in order.

    Accepted: ``head.weight``/``bias`` or ``head.mlp.weight``/``bias`` (one
    linear), or an ``nn.Sequential`` under ``head.mlp.{k}`` (DINO/iBOT) or
    ``head.{k}`` (MoCo v3) whose modules are Linear (``weight`` 2-D, optional
    ``bias``) or BatchNorm1d (``running_mean``/``running_var``, ``weight``/
    ``bias`` unless ``affine=False``). A gap of one index between parametrised
    modules is their parameter-free activation: ``act`` (default GELU for
    ``head.mlp.*``, ReLU for ``head.{k}``). Ops: ``{"kind": "linear", "w", "b",
    "in", "out"}``, ``{"kind": "bn", "prefix", "affine"}``, ``{"kind": "act",
    "fn"}``. ``name`` maps a canonical key to its name in the file (errors).
    """
    keys = sorted(k for k in sd if k.startswith("head."))
    if not keys:
        return []
    lin = lambda w, b: {"kind": "linear", "w": w, "b": b}  # noqa: E731
    if set(keys) <= {"head.weight", "head.bias"} and "head.weight" in sd:
        ops = [lin("head.weight", "head.bias" if "head.bias" in sd else None)]
    elif set(keys) <= {"head.mlp.weight", "head.mlp.bias"} and "head.mlp.weight" in sd:
        ops = [lin("head.mlp.weight", "head.mlp.bias" if "head.mlp.bias" in sd else None)]
    else:
        base = "head.mlp." if all(k.startswith("head.mlp.") for k in keys) else "head."
        act = act or ("gelu" if base == "head.mlp." else "relu")
        if act not in HEAD_ACTS:
            raise ConversionError(f"head activation {act!r} is not one of {HEAD_ACTS}")
        idx: dict = {}
        pat = re.compile(re.escape(base) + r"(\d+)\.(\w+)")
        for k in keys:
            m = pat.fullmatch(k)
            if not m:
                raise ConversionError(f"unsupported head parameter {name(k)!r} (accepted: "
                                      f"head.weight/bias, head.mlp.{{k}}.* or head.{{k}}.* "
                                      f"Linear/BatchNorm1d modules)")
            idx.setdefault(int(m[1]), set()).add(m[2])
        ops, prev = [], None
        for i in sorted(idx):
            p, params = f"{base}{i}.", idx[i]
            if prev is not None and i - prev == 2:
                ops.append({"kind": "act", "fn": act})
            elif prev is not None and i - prev > 2:
                raise ConversionError(f"{name(p)!r}: {i - prev - 1} parameter-free modules "
                                      f"before it (expected one activation)")
            prev = i
            if "running_mean" in params or "running_var" in params:
                bad = sorted(params - _BN_PARAMS) or [q for q in ("running_mean", "running_var")
                                                       if q not in params]
                if bad:
                    raise ConversionError(f"{name(p + bad[0])!r}: {name(p)!r} is not a "
                                          f"BatchNorm1d (params {sorted(params)})")
                if ("weight" in params) != ("bias" in params):
                    raise ConversionError(f"{name(p)!r}: BatchNorm1d with only one of "
                                          f"weight/bias")
                ops.append({"kind": "bn", "prefix": p[:-1], "affine": "weight" in params})
            elif "weight" in params and np.ndim(sd[p + "weight"]) == 2 \
                    and params <= {"weight", "bias"}:
                ops.append(lin(p + "weight", p + "bias" if "bias" in params else None))
            else:
                raise ConversionError(f"{name(p)!r} is neither a Linear nor a BatchNorm1d "
                                      f"(params {sorted(params)})")
    if ops[0]["kind"] != "linear":
        raise ConversionError(f"the head must start with a Linear layer, not {name(keys[0])!r}")
    cur = dim
    for op in ops:
        if op["kind"] == "linear":
            w = sd[op["w"]]
            if w.shape[1] != cur:
                raise ConversionError(f"{name(op['w'])!r} has shape {list(w.shape)}, expected "
                                      f"[*, {cur}]")
            op["in"], op["out"] = cur, cur = int(w.shape[1]), int(w.shape[0])
            if op["b"] and list(sd[op["b"]].shape) != [cur]:
                raise ConversionError(f"{name(op['b'])!r} has shape {list(sd[op['b']].shape)}, "
                                      f"expected [{cur}]")
        elif op["kind"] == "bn":
            for q in ("weight", "bias", "running_mean", "running_var"):
                k = f"{op['prefix']}.{q}"
                if k in sd and list(sd[k].shape) != [cur]:
                    raise ConversionError(f"{name(k)!r} has shape {list(sd[k].shape)}, "
                                          f"expected [{cur}]")
    return ops


def head_summary(ops: list) -> list:
    """Human-readable head ops, e.g. ``["linear 768->4096 (no bias)", "bn", "relu"]``."""
    out = []
    for op in ops:
        if op["kind"] == "linear":
            out.append(f"linear {op['in']}->{op['out']}" + ("" if op["b"] else " (no bias)"))
        elif op["kind"] == "bn":
            out.append("batchnorm" + ("" if op["affine"] else " (affine=False)"))
        else:
            out.append(op["fn"])
    return out


def _missing(sd: dict, keys) -> list:
    return [k for k in keys if k not in sd]


def infer_arch(sd: dict, heads: int, head_act: str | None = None) -> Arch:
    """Check a canonical state dict and infer the ViT hyper-parameters."""
    rel_tables = [k for k in sd if k.endswith(REL_TABLE)]
    top_required = ["cls_token", "patch_embed.proj.weight"]
    if not rel_tables:
        top_required.insert(1, "pos_embed")  # only relative-bias models may lack it
    miss = _missing(sd, top_required)
    block_ids = sorted({int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not block_ids:
        miss.append("blocks.0.*")
    if block_ids and block_ids != list(range(len(block_ids))):
        raise ConversionError(f"block indices are not contiguous: {block_ids}")
    for i in block_ids:
        miss += _missing(sd, [f"blocks.{i}.{s}" for s in BLOCK_REQUIRED])
    final_norm = "norm" if "norm.weight" in sd else ("fc_norm" if "fc_norm.weight" in sd
                                                     else None)
    if final_norm is None:
        miss.append("norm.weight")
    else:
        miss += _missing(sd, [f"{final_norm}.bias"])
    if miss:
        shown = ", ".join(miss[:12]) + (f", ... ({len(miss)} in all)" if len(miss) > 12 else "")
        raise ConversionError(f"state dict is missing required keys: {shown}")

    allowed = {f"blocks.{i}.{s}" for i in block_ids for s in BLOCK_REQUIRED + BLOCK_OPTIONAL}
    extra = sorted(k for k in sd if k.startswith("blocks.") and k not in allowed)
    if extra:
        raise ConversionError(f"unsupported per-block parameters (qk-norm, SwiGLU, ...?): "
                              f"{extra[:8]}")

    dim = int(sd["cls_token"].shape[-1])
    w = sd["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3] or w.shape[0] != dim:
        raise ConversionError(f"patch_embed.proj.weight has shape {w.shape}; expected "
                              f"[{dim}, 3, p, p]")
    pos_has_cls, grid = True, None
    if "pos_embed" in sd:
        t = int(sd["pos_embed"].shape[-2])
        g1, g0 = math.isqrt(t - 1), math.isqrt(t)
        if g1 * g1 == t - 1:
            pos_has_cls, grid = True, g1
        elif g0 * g0 == t:
            pos_has_cls, grid = False, g0
        else:
            raise ConversionError(f"pos_embed has {t} tokens: neither 1+g*g nor g*g")
    if heads is None or dim % heads:
        raise ConversionError(f"heads={heads} does not divide dim={dim}")
    window = None
    for k in rel_tables:
        window = rel_window(int(sd[k].shape[0]))
        if int(sd[k].shape[1]) != heads:
            raise ConversionError(f"{k!r} has {sd[k].shape[1]} heads but heads={heads}")
    layer_scale = any(k.endswith("ls1.gamma") for k in sd)
    return Arch(
        depth=len(block_ids), dim=dim, patch=int(w.shape[-1]), heads=int(heads),
        mlp_hidden=int(sd["blocks.0.mlp.fc1.weight"].shape[0]), pos_has_cls=pos_has_cls,
        pos_grid=grid, final_norm=final_norm, norm_pre="norm_pre.weight" in sd,
        layer_scale=layer_scale, head=_head_ops(sd, dim, head_act), rel_window=window,
        rel_shared=f"rel_pos_bias.{REL_TABLE}" in sd,
        rel_layers=any(k.startswith("blocks.") for k in rel_tables))


def unused_keys(sd: dict, arch: Arch) -> list:
    """Top-level keys of a canonical state dict that ``build`` will not read."""
    used = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            f"{arch.final_norm}.weight", f"{arch.final_norm}.bias",
            "norm_pre.weight", "norm_pre.bias"}
    used |= {k for op in arch.head for k in (op.get("w"), op.get("b")) if k}
    used |= {f"{op['prefix']}.{q}" for op in arch.head if op["kind"] == "bn" for q in _BN_PARAMS}
    used |= {f"rel_pos_bias.{REL_TABLE}"}
    return sorted(k for k in sd if not k.startswith("blocks.") and k not in used)


# --------------------------------------------------------------------------
# Position-embedding resampling (antialiased bicubic, PIL/timm style)
# --------------------------------------------------------------------------


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a=-0.5 as PIL / torch antialias)."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of PIL's antialiased bicubic resize along one axis."""
    scale = in_size / out_size
    support_scale = max(scale, 1.0)
    support = 2.0 * support_scale
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _cubic((j - center + 0.5) / support_scale)
        m[i, lo:hi] = w / w.sum()
    return m


def resample_grid(grid: np.ndarray, out: int) -> np.ndarray:
    """Resize a ``[g, g, D]`` grid to ``[out, out, D]`` (bicubic, antialiased)."""
    mh = resample_matrix(grid.shape[0], out)
    mw = resample_matrix(grid.shape[1], out)
    return np.einsum("ai,ijd,bj->abd", mh, grid.astype(np.float64), mw).astype(np.float32)


def pos_embed_for(sd: dict, arch: Arch, grid: int) -> np.ndarray:
    """``pos_embed`` ``[1, T, D]`` for a ``grid x grid`` patch grid (resampled if needed)."""
    pe = sd["pos_embed"].reshape(-1, arch.dim)
    if arch.pos_grid == grid:
        return pe[None].astype(np.float32)
    prefix, body = (pe[:1], pe[1:]) if arch.pos_has_cls else (pe[:0], pe)
    body = resample_grid(body.reshape(arch.pos_grid, arch.pos_grid, arch.dim), grid)
    return np.concatenate([prefix, body.reshape(grid * grid, arch.dim)])[None]


# --------------------------------------------------------------------------
# ONNX graph construction
# --------------------------------------------------------------------------


class _Graph:
    """Tiny helper that accumulates ONNX nodes and initializers."""

    def __init__(self):
        from onnx import helper, numpy_helper  # local: keep module import cheap
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self._n, self._consts = [], [], 0, {}
        self._init_names: set = set()

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        """Add an initializer (once per name: re-adding the same name reuses it)."""
        if name in self._init_names:
            return name
        self._init_names.add(name)
        self.inits.append(self.numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A shared constant initializer (shapes, axes, scalars)."""
        arr = np.asarray(values, dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=self.fresh(op_type), **attrs))
        return out

    # -- layers ------------------------------------------------------------

    def linear(self, x: str, sd: dict, wkey: str, bkey: str | None, out=None) -> str:
        """``x @ W.T + b`` with W stored pre-transposed."""
        wt = self.init(wkey + "_T", sd[wkey].T)
        y = self.op("MatMul", [x, wt], out=None if bkey else out)
        return self.op("Add", [y, self.init(bkey, sd[bkey])], out=out) if bkey else y

    def layer_norm(self, x: str, sd: dict, prefix: str, eps: float, out=None) -> str:
        w = self.init(prefix + ".weight", sd[prefix + ".weight"])
        b = self.init(prefix + ".bias", sd[prefix + ".bias"])
        return self.op("LayerNormalization", [x, w, b], out=out, axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        """Exact GELU: ``0.5 * x * (1 + erf(x / sqrt(2)))`` (ORT fuses this)."""
        f = np.float32
        e = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2.0), f)])])
        y = self.op("Mul", [x, self.op("Add", [e, self.const(1.0, f)])])
        return self.op("Mul", [y, self.const(0.5, f)])


def _attention(g: _Graph, x: str, sd: dict, pre: str, arch: Arch,
               rel_bias: str | None = None) -> str:
    """Multi-head self-attention on ``x`` ``[B, T, D]`` (already normed).

    ``rel_bias`` names a ``[H, T, T]`` initializer added to the scaled logits
    before the softmax (BEiT/CAE relative position bias).
    """
    h, hd = arch.heads, arch.dim // arch.heads
    bias = pre + "qkv.bias" if pre + "qkv.bias" in sd else None
    qkv = g.linear(x, sd, pre + "qkv.weight", bias)                        # [B,T,3D]
    qkv = g.op("Reshape", [qkv, g.const([0, 0, 3, h, hd])])                # [B,T,3,H,hd]
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                   # [3,B,H,T,hd]
    q, k, v = (g.op("Gather", [qkv, g.const(i)], axis=0) for i in range(3))
    q = g.op("Mul", [q, g.const(hd ** -0.5, np.float32)])
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])                         # [B,H,hd,T]
    logits = g.op("MatMul", [q, kt])                                       # [B,H,T,T]
    if rel_bias:
        logits = g.op("Add", [logits, rel_bias])
    attn = g.op("Softmax", [logits], axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])  # [B,T,H,hd]
    y = g.op("Reshape", [y, g.const([0, 0, arch.dim])])
    return g.linear(y, sd, pre + "proj.weight", pre + "proj.bias")


def _mlp(g: _Graph, x: str, sd: dict, pre: str) -> str:
    y = g.gelu(g.linear(x, sd, pre + "fc1.weight", pre + "fc1.bias"))
    return g.linear(y, sd, pre + "fc2.weight", pre + "fc2.bias")


def _residual(g: _Graph, x: str, branch: str, sd: dict, gamma_key: str) -> str:
    if gamma_key in sd:
        branch = g.op("Mul", [branch, g.init(gamma_key, sd[gamma_key])])
    return g.op("Add", [x, branch])


def _embed(g: _Graph, sd: dict, arch: Arch, grid: int) -> str:
    """Patch embedding + cls token + position embedding -> ``[B, 1+N, D]``."""
    d = arch.dim
    w = g.init("patch_embed.proj.weight", sd["patch_embed.proj.weight"])
    ins = ["pixel_values", w]
    if "patch_embed.proj.bias" in sd:
        ins.append(g.init("patch_embed.proj.bias", sd["patch_embed.proj.bias"]))
    p = arch.patch
    x = g.op("Conv", ins, kernel_shape=[p, p], strides=[p, p])             # [B,D,g,g]
    x = g.op("Reshape", [x, g.const([0, d, grid * grid])])
    x = g.op("Transpose", [x], perm=[0, 2, 1])                              # [B,N,D]
    pos = g.init("pos_embed", pos_embed_for(sd, arch, grid)) if arch.pos_grid else None
    if pos and not arch.pos_has_cls:
        x = g.op("Add", [x, pos])
    batch = g.op("Shape", ["pixel_values"], start=0, end=1)
    shape = g.op("Concat", [batch, g.const([1, d])], axis=0)
    cls = g.op("Expand", [g.init("cls_token", sd["cls_token"].reshape(1, 1, d)), shape])
    x = g.op("Concat", [cls, x], axis=1)                                    # [B,1+N,D]
    if pos and arch.pos_has_cls:
        x = g.op("Add", [x, pos])
    return x


def fold_head(sd: dict, ops: list, bn_eps: float = BN_EPS) -> list:
    """Fold each BatchNorm1d (eval mode: running stats) into the Linear before it.

    Returns ``[(W [out, in] float32, b [out] float32 | None, act | None)]``:
    ``BN(x W^T + b) = x (s W)^T + (s b + t)`` with ``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean * s`` (gamma = 1, beta = 0 when ``affine=False``).
    """
    layers: list = []
    for op in ops:
        if op["kind"] == "linear":
            b = sd[op["b"]].astype(np.float64) if op["b"] else None
            layers.append([sd[op["w"]].astype(np.float64), b, None])
        elif op["kind"] == "bn":
            if not layers or layers[-1][2] is not None:
                raise ConversionError(f"{op['prefix']}: BatchNorm1d must follow a Linear")
            p = op["prefix"] + "."
            n = layers[-1][0].shape[0]
            gamma = sd[p + "weight"].astype(np.float64) if op["affine"] else np.ones(n)
            beta = sd[p + "bias"].astype(np.float64) if op["affine"] else np.zeros(n)
            scale = gamma / np.sqrt(sd[p + "running_var"].astype(np.float64) + bn_eps)
            shift = beta - sd[p + "running_mean"].astype(np.float64) * scale
            w, b, _ = layers[-1]
            layers[-1][:2] = [w * scale[:, None], (b if b is not None else 0.0) * scale + shift]
        else:
            layers[-1][2] = op["fn"]
    return [(w.astype(np.float32), None if b is None else np.asarray(b, np.float32), a)
            for w, b, a in layers]


def _head(g: _Graph, x: str, sd: dict, arch: Arch) -> str:
    """The head's Linear(+folded BN)/activation layers; the last writes ``projection``."""
    layers = fold_head(sd, arch.head)
    for i, (w, b, act) in enumerate(layers):
        last = i == len(layers) - 1 and act is None
        y = g.op("MatMul", [x, g.init(f"projection.{i}.weight_T", w.T)],
                 out="projection" if last and b is None else None)
        if b is not None:
            y = g.op("Add", [y, g.init(f"projection.{i}.bias", b)],
                     out="projection" if last else None)
        if act == "gelu":
            y = g.gelu(y)
        elif act == "relu":
            y = g.op("Relu", [y])
        x = y
    if x != "projection":
        x = g.op("Identity", [x], out="projection")
    return x


def check_rel_grid(arch: Arch, grid: int, img_size: int) -> None:
    """Refuse an input size whose patch grid differs from the relative-bias window."""
    w = arch.rel_window
    if w and grid != w:
        raise ConversionError(
            f"the relative position bias tables are for a {w}x{w} patch grid ({w * arch.patch} "
            f"px at patch {arch.patch}), but img_size {img_size} gives {grid}x{grid}. Resizing "
            f"the tables (BEiT's run_class_finetuning.py: scipy cubic interpolation on a "
            f"geometric grid) is not implemented; convert with --img-size {w * arch.patch}")


def layer_rel_bias(sd: dict, arch: Arch, i: int) -> np.ndarray | None:
    """The ``[H, 1+N, 1+N]`` relative position bias of block ``i`` (shared + own), or None."""
    if not arch.rel_window:
        return None
    bias = None
    for k in (f"rel_pos_bias.{REL_TABLE}", f"blocks.{i}.attn.{REL_TABLE}"):
        if k in sd:
            b = rel_pos_bias(sd[k], arch.rel_window)
            bias = b if bias is None else bias + b
    return bias


def build(state_dict: dict, img_size: int = 224, patch: int | None = None,
          heads: int | None = None, eps: float = 1e-6, name: str = "vit",
          source: dict | str | None = None, mean=None, std=None,
          head_act: str | None = None, method: str | None = None):
    """Build an ``onnx.ModelProto`` for a timm ViT state dict.

    depth/dim/patch are inferred from ``state_dict`` (``patch``, if given, is
    only checked); ``heads`` is required. The state dict goes through
    :func:`canonicalize` with ``keep_head=True``, so any ``head.*`` present
    becomes the ``projection`` output - drop it beforehand if unwanted.
    ``head_act`` is the activation between head layers (see :func:`_head_ops`);
    ``method`` (``--method``) is recorded in the spec.
    """
    import onnx
    from onnx import TensorProto, helper

    notes: list = []
    sd = canonicalize(state_dict, keep_head=True, notes=notes)
    if heads is None:
        raise ConversionError("heads must be given (ViT-Ti 3, ViT-S 6, ViT-B 12)")
    arch = infer_arch(sd, heads, head_act)
    if patch is not None and patch != arch.patch:
        raise ConversionError(f"patch={patch} but the checkpoint's patch embed is {arch.patch}")
    if img_size % arch.patch:
        raise ConversionError(f"img_size {img_size} is not a multiple of patch {arch.patch}")
    grid = img_size // arch.patch
    check_rel_grid(arch, grid, img_size)
    if arch.pos_grid and grid != arch.pos_grid:
        notes.append(f"pos_embed resampled {arch.pos_grid}x{arch.pos_grid} -> {grid}x{grid} "
                     f"(antialiased bicubic)")

    g = _Graph()
    x = _embed(g, sd, arch, grid)
    if arch.norm_pre:
        x = g.layer_norm(x, sd, "norm_pre", eps)
    for i in range(arch.depth):
        b = f"blocks.{i}."
        rb = layer_rel_bias(sd, arch, i)
        if rb is not None:
            rb = g.init("rel_pos_bias" if not arch.rel_layers else b + "attn.rel_pos_bias", rb)
        x = _residual(g, x, _attention(g, g.layer_norm(x, sd, b + "norm1", eps), sd,
                                       b + "attn.", arch, rb), sd, b + "ls1.gamma")
        x = _residual(g, x, _mlp(g, g.layer_norm(x, sd, b + "norm2", eps), sd, b + "mlp."),
                      sd, b + "ls2.gamma")
    normed = g.layer_norm(x, sd, arch.final_norm, eps)
    cls = g.op("Gather", [normed, g.const(0)], out="cls", axis=1)
    end = g.const([np.iinfo(np.int64).max])
    g.op("Slice", [normed, g.const([1]), end, g.const([1])], out="patch_tokens")
    outputs = [("cls", ["batch", arch.dim]), ("patch_tokens", ["batch", grid * grid, arch.dim])]
    head_in = cls
    if arch.pooled:
        body = g.op("Slice", [x, g.const([1]), end, g.const([1])])
        mean_tok = g.op("ReduceMean", [body], axes=[1], keepdims=0)
        head_in = g.layer_norm(mean_tok, sd, "fc_norm", eps, out="pooled")
        outputs.append(("pooled", ["batch", arch.dim]))
    else:
        # The mean feature, made on the device: reading it instead of the patch tokens moves
        # 1/N of the bytes off a GPU (partlens reads patch_tokens only for --tokens/--dense).
        g.op("ReduceMean", ["patch_tokens"], out="pooled", axes=[1], keepdims=0)
        outputs.append(("pooled", ["batch", arch.dim]))
    proj_dim = arch.proj_dim
    if arch.head:
        _head(g, head_in, sd, arch)
        outputs.append(("projection", ["batch", proj_dim]))

    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch", 3, img_size, img_size])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="partlens-vit.py")
    model.ir_version = IR_VERSION
    spec = {
        "spec_version": 1, "name": name, "input": "pixel_values",
        "input_size": [img_size, img_size],
        "mean": list(mean or IMAGENET_MEAN), "std": list(std or IMAGENET_STD),
        "interpolation": "bicubic",
        "outputs": {"cls": "cls", "patch_tokens": "patch_tokens", "feature_map": None,
                    "projection": "projection" if proj_dim else None,
                    "pooled": "pooled"},
        "patch_size": arch.patch,
    }
    if method:
        spec["method"] = method
    src = dict(source) if isinstance(source, dict) else ({"text": source} if source else {})
    src.update(arch={"depth": arch.depth, "dim": arch.dim, "heads": arch.heads,
                     "patch": arch.patch, "mlp_hidden": arch.mlp_hidden,
                     "img_size": img_size, "eps": eps, "projection_dim": proj_dim,
                     "layer_scale": arch.layer_scale, "final_norm": arch.final_norm,
                     "pos_embed": arch.pos_grid is not None,
                     "rel_pos_bias": ("shared" if arch.rel_shared else "") +
                                     ("+" if arch.rel_shared and arch.rel_layers else "") +
                                     ("per-layer" if arch.rel_layers else "") or None,
                     "head": head_summary(arch.head)})
    if notes:
        src["notes"] = src.get("notes", []) + [n for n in notes if n not in src.get("notes", [])]
    helper.set_model_props(model, {"partlens.spec": json.dumps(spec),
                                   "partlens.source": json.dumps(src)})
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------
# Pure-numpy reference forward pass (float64), for the self-test
# --------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _np_ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _np_rel_bias(table: np.ndarray, w: int) -> np.ndarray:
    """``[H, 1+N, 1+N]`` bias by direct table lookup per token pair (no index buffer)."""
    n, r = w * w, table.shape[0]
    t = np.empty((table.shape[1], n + 1, n + 1))
    for i in range(n):
        for j in range(n):
            dy, dx = i // w - j // w, i % w - j % w
            t[:, 1 + i, 1 + j] = table[(dy + w - 1) * (2 * w - 1) + dx + w - 1]
    t[:, 0, :] = table[r - 3][:, None]   # cls -> token
    t[:, :, 0] = table[r - 2][:, None]   # token -> cls
    t[:, 0, 0] = table[r - 1]            # cls -> cls
    return t


def numpy_forward(state_dict: dict, pixels: np.ndarray, heads: int, eps: float = 1e-6,
                  head_act: str | None = None) -> dict:
    """Reference ViT forward in float64 numpy; returns the same outputs as the graph.

    Unlike the graph it applies head BatchNorms unfolded and looks relative
    position biases up pair by pair.
    """
    sd = canonicalize(state_dict, keep_head=True)
    arch = infer_arch(sd, heads, head_act)
    f = {k: v.astype(np.float64) for k, v in sd.items()}
    b, _, hh, ww = pixels.shape
    p, d = arch.patch, arch.dim
    gh, gw = hh // p, ww // p
    patches = pixels.astype(np.float64).reshape(b, 3, gh, p, gw, p)
    patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, 3 * p * p)
    x = patches @ f["patch_embed.proj.weight"].reshape(d, -1).T
    x = x + f.get("patch_embed.proj.bias", 0.0)
    pos = pos_embed_for(sd, arch, gh).astype(np.float64) if arch.pos_grid else 0.0
    if not arch.pos_has_cls:
        x = x + pos
    x = np.concatenate([np.broadcast_to(f["cls_token"].reshape(1, 1, d), (b, 1, d)), x], 1)
    if arch.pos_has_cls:
        x = x + pos
    if arch.rel_window and gh != arch.rel_window:
        raise ConversionError(f"relative position bias is for a {arch.rel_window}x"
                              f"{arch.rel_window} grid, not {gh}x{gh}")
    if arch.norm_pre:
        x = _np_ln(x, f["norm_pre.weight"], f["norm_pre.bias"], eps)
    h, hd = heads, d // heads
    for i in range(arch.depth):
        pre = f"blocks.{i}."
        y = _np_ln(x, f[pre + "norm1.weight"], f[pre + "norm1.bias"], eps)
        qkv = y @ f[pre + "attn.qkv.weight"].T + f.get(pre + "attn.qkv.bias", 0.0)
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(b, -1, h, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
        s = np.einsum("bhid,bhjd->bhij", q, k) * hd ** -0.5
        for key in (f"rel_pos_bias.{REL_TABLE}", pre + f"attn.{REL_TABLE}"):
            if key in f:
                s = s + _np_rel_bias(f[key], arch.rel_window)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        y = np.einsum("bhij,bhjd->bihd", s, v).reshape(b, -1, d)
        y = y @ f[pre + "attn.proj.weight"].T + f[pre + "attn.proj.bias"]
        x = x + y * f.get(pre + "ls1.gamma", 1.0)
        y = _np_ln(x, f[pre + "norm2.weight"], f[pre + "norm2.bias"], eps)
        y = _np_gelu(y @ f[pre + "mlp.fc1.weight"].T + f[pre + "mlp.fc1.bias"])
        y = y @ f[pre + "mlp.fc2.weight"].T + f[pre + "mlp.fc2.bias"]
        x = x + y * f.get(pre + "ls2.gamma", 1.0)
    fn = arch.final_norm
    normed = _np_ln(x, f[fn + ".weight"], f[fn + ".bias"], eps)
    out = {"cls": normed[:, 0], "patch_tokens": normed[:, 1:]}
    head_in = out["cls"]
    if arch.pooled:
        out["pooled"] = head_in = _np_ln(x[:, 1:].mean(1), f[fn + ".weight"], f[fn + ".bias"],
                                         eps)
    else:
        out["pooled"] = normed[:, 1:].mean(1)
    if arch.head:
        y = head_in
        for op in arch.head:
            if op["kind"] == "linear":
                y = y @ f[op["w"]].T + (f[op["b"]] if op["b"] else 0.0)
            elif op["kind"] == "bn":
                p = op["prefix"] + "."
                y = (y - f[p + "running_mean"]) / np.sqrt(f[p + "running_var"] + BN_EPS)
                if op["affine"]:
                    y = y * f[p + "weight"] + f[p + "bias"]
            else:
                y = _np_gelu(y) if op["fn"] == "gelu" else np.maximum(y, 0.0)
        out["projection"] = y
    return out


# --------------------------------------------------------------------------
# Self-test and benchmark
# --------------------------------------------------------------------------


def _ort_session(model_or_path, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else model_or_path
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _compare(label: str, model, sd: dict, heads: int, img: int, batch: int = 2,
             tol: float = 1e-4, expect: dict | None = None, head_act: str | None = None) -> float:
    """Run ``model`` in ORT and the numpy reference; return the max abs diff."""
    rng = np.random.default_rng(123)
    x = rng.standard_normal((batch, 3, img, img)).astype(np.float32)
    sess = _ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"pixel_values": x})))
    ref = numpy_forward(sd, x, heads, head_act=head_act)
    if sorted(got) != sorted(ref):
        raise AssertionError(f"{label}: outputs {sorted(got)} != reference {sorted(ref)}")
    worst = 0.0
    parts = []
    for n in names:
        if expect and n in expect and list(got[n].shape) != expect[n]:
            raise AssertionError(f"{label}: {n} shape {list(got[n].shape)} != {expect[n]}")
        diff = float(np.abs(got[n] - ref[n]).max())
        worst = max(worst, diff)
        parts.append(f"{n}{list(got[n].shape)} maxdiff={diff:.2e}")
    status = "ok" if worst < tol else "FAIL"
    print(f"  [{status}] {label}: " + ", ".join(parts))
    if worst >= tol:
        raise AssertionError(f"{label}: max abs diff {worst:.3e} >= {tol}")
    return worst


def _check_resampler() -> float:
    """Compare :func:`resample_grid` against PIL's float bicubic resize, if available."""
    try:
        from PIL import Image
    except ImportError:
        print("  [skip] resampler vs PIL (pillow not installed)")
        return 0.0
    rng = np.random.default_rng(7)
    worst = 0.0
    for src, dst in ((14, 16), (16, 14), (37, 16), (7, 9)):
        grid = rng.standard_normal((src, src, 3)).astype(np.float32)
        ours = resample_grid(grid, dst)
        for c in range(3):
            im = Image.fromarray(grid[:, :, c], mode="F").resize((dst, dst), Image.BICUBIC)
            worst = max(worst, float(np.abs(np.asarray(im) - ours[:, :, c]).max()))
    status = "ok" if worst < 1e-4 else "FAIL"
    print(f"  [{status}] pos_embed resampler vs PIL bicubic: maxdiff={worst:.2e}")
    if worst >= 1e-4:
        raise AssertionError("resampler disagrees with PIL")
    return worst


def selftest() -> None:
    """Tiny model: ORT vs numpy (< 1e-4), shapes, metadata; plus variant layouts."""
    import onnx
    cfg = PRESETS["tiny"]
    sd = random_state_dict(cfg["depth"], cfg["dim"], cfg["heads"], cfg["patch"],
                           cfg["img_size"], seed=0)
    model = build(sd, img_size=cfg["img_size"], heads=cfg["heads"], name="vit-tiny-random",
                  source={"kind": "random", "seed": 0, "preset": "tiny"})
    path = "/tmp/partlens_vit_tiny_selftest.onnx"
    onnx.save(model, path)
    print(f"tiny model: {os.path.getsize(path):,} bytes ({path})")
    _compare("tiny", path, sd, cfg["heads"], cfg["img_size"],
             expect={"cls": [2, 64], "patch_tokens": [2, 196, 64]})
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    spec = json.loads(meta["partlens.spec"])
    assert spec["patch_size"] == 16 and spec["outputs"]["projection"] is None, spec
    assert spec["input_size"] == [224, 224] and spec["interpolation"] == "bicubic", spec
    print("  [ok] metadata partlens.spec / partlens.source present")

    # Variants exercising the other accepted layouts.
    v = random_state_dict(2, 64, 2, 16, 224, proj_dim=32, seed=1)
    _compare("tiny + DINO-style projector", build(v, heads=2), v, 2, 224,
             expect={"projection": [2, 32]})

    rng = np.random.default_rng(2)
    v = random_state_dict(2, 48, 3, 8, 64, mlp_ratio=3, seed=2)
    v = {("module.backbone." + k): a for k, a in v.items()}
    for i in range(2):
        p = f"module.backbone.blocks.{i}."
        v[p + "gamma_1"] = rng.uniform(0.1, 1.0, 48).astype(np.float32)
        v[p + "gamma_2"] = rng.uniform(0.1, 1.0, 48).astype(np.float32)
        qkv_b = v.pop(p + "attn.qkv.bias")
        v[p + "attn.q_bias"] = rng.standard_normal(48).astype(np.float32) * 0.1
        v[p + "attn.v_bias"] = rng.standard_normal(48).astype(np.float32) * 0.1
        del qkv_b
    v["module.backbone.fc_norm.weight"] = v.pop("module.backbone.norm.weight")
    v["module.backbone.fc_norm.bias"] = v.pop("module.backbone.norm.bias")
    v["module.backbone.mask_token"] = np.zeros((1, 1, 48), np.float32)
    v["head.weight"] = rng.standard_normal((10, 48)).astype(np.float32) * 0.02
    v["head.bias"] = np.zeros(10, np.float32)
    # Checkpoint trained at 64 px (8x8 grid), exported at 96 px (12x12 grid).
    _compare("BEiT/MAE-style (prefixes, gamma, q/v bias, fc_norm pooled, head, pos 8->12)",
             build(v, img_size=96, heads=3), v, 3, 96,
             expect={"pooled": [2, 48], "projection": [2, 10], "patch_tokens": [2, 144, 48]})

    v = random_state_dict(1, 32, 2, 16, 224, seed=3)
    v["pos_embed"] = v["pos_embed"][:, 1:]  # no_embed_class (DeiT-III style)
    v["norm_pre.weight"] = np.full(32, 1.5, np.float32)
    v["norm_pre.bias"] = np.full(32, 0.1, np.float32)
    _compare("no_embed_class pos_embed + norm_pre, pos 14->16",
             build(v, img_size=256, heads=2), v, 2, 256)

    _check_resampler()

    for bad, msg in ((lambda s: s.pop("blocks.1.mlp.fc2.weight"), "missing"),
                     (lambda s: s.__setitem__("blocks.0.attn.relative_position_bias_table",
                                              np.zeros((10, 2), np.float32)), "relative"),
                     (lambda s: s.__setitem__("dist_token", sd["cls_token"]), "distillation")):
        s = dict(sd)
        bad(s)
        try:
            build(s, heads=2)
        except ConversionError as e:
            assert msg in str(e), e
            print(f"  [ok] refused: {e}")
        else:
            raise AssertionError(f"expected a ConversionError mentioning {msg!r}")
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "methods.py")):
        _import_methods().selftest()
    else:
        print("  [skip] --method checks (methods.py not installed next to vit.py)")
    print("selftest passed")


def bench(preset: str = "base", batch: int = 8, threads: int = 2, runs: int = 3,
          path: str = "/tmp/partlens_vit_bench.onnx") -> float:
    """Time ORT CPU on a random-weight preset; returns images/s."""
    import onnx
    cfg = PRESETS[preset]
    t0 = time.perf_counter()
    sd = random_state_dict(cfg["depth"], cfg["dim"], cfg["heads"], cfg["patch"],
                           cfg["img_size"], seed=0)
    model = build(sd, img_size=cfg["img_size"], heads=cfg["heads"], name=f"vit-{preset}")
    onnx.save(model, path)
    del model
    print(f"{preset}: built + saved in {time.perf_counter() - t0:.1f}s, "
          f"{os.path.getsize(path) / 2**20:.1f} MiB at {path}")
    sess = _ort_session(path, threads)
    x = np.random.default_rng(0).standard_normal(
        (batch, 3, cfg["img_size"], cfg["img_size"])).astype(np.float32)
    sess.run(None, {"pixel_values": x})  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"pixel_values": x})
        times.append(time.perf_counter() - t)
    best, med = min(times), sorted(times)[len(times) // 2]
    print(f"{preset}: batch {batch}, {threads} threads: best {best:.3f}s "
          f"({batch / best:.2f} img/s), median {med:.3f}s ({batch / med:.2f} img/s) "
          f"over {runs} runs")
    return batch / med


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _import_pth():
    """Import the sibling ``pth.py`` checkpoint reader (lazily)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pth.py")
    if not os.path.exists(path):
        raise SystemExit(f"--weights needs {path} (checkpoint reader), which is missing")
    spec = importlib.util.spec_from_file_location("partlens_pth", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _floats3(s: str) -> list:
    vals = [float(t) for t in s.split(",")]
    if len(vals) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers")
    return vals


METHOD_NAMES = ("deit", "mocov3", "dino", "beit", "mae", "cae", "ibot")


def _import_methods():
    """Import the sibling ``methods.py`` (per-method layouts), lazily.

    ``methods.py`` imports ``vit``; when this file runs as ``__main__`` that
    name is aliased to this module so both share one copy.
    """
    sys.modules.setdefault("vit", sys.modules[__name__])
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, "methods.py")):
        raise SystemExit(f"--method needs {os.path.join(here, 'methods.py')}, which is missing")
    if here not in sys.path:
        sys.path.insert(0, here)
    import methods  # noqa: E402
    return methods


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Write a timm-layout ViT to ONNX (numpy + onnx, no torch).",
        epilog="Random weights: --preset and/or --depth/--dim/--heads/--patch/--img-size "
               "(with --method: in that method's published layout, with its head). "
               "Checkpoint: --weights (depth/dim/patch inferred; --heads defaults by width). "
               "--method reads the published file of one of the paper's seven methods.")
    ap.add_argument("--out", help="output .onnx path")
    ap.add_argument("--weights", help="checkpoint (.pth/.pth.tar/.pt/.bin/.ckpt/.npz/"
                                      ".safetensors)")
    ap.add_argument("--method", choices=METHOD_NAMES,
                    help="the pretraining method whose published layout --weights has (wrapper, "
                         "prefix, features, head, pixel mean/std); see the module docstring")
    ap.add_argument("--key", help="sub-dict of a wrapper checkpoint (teacher, model, "
                                  "state_dict, a/b for nested); with --method it overrides the "
                                  "method's wrapper")
    ap.add_argument("--keep-head", action="store_true",
                    help="without --method: keep the checkpoint's head.* as 'projection' "
                         "(with --method the method's projection head is kept by default)")
    ap.add_argument("--drop-head", action="store_true",
                    help="with --method: drop the projection head (no 'projection' output)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="random-weight preset "
                    "(default tiny when no --weights)")
    for a in ("depth", "dim", "heads", "patch", "img-size"):
        ap.add_argument(f"--{a}", type=int)
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--proj-dim", type=int, help="random weights only: the projection size "
                    "(without --method: add a DINO-style projector; with --method: the head's "
                    "bottleneck/output, default the official 256)")
    ap.add_argument("--proj-hidden", type=int, help="random weights with --method: the head's "
                    "hidden width (official: MoCo v3 4096, DINO/iBOT 2048)")
    ap.add_argument("--proj-out", type=int, help="random weights with --method: DINO/iBOT "
                    "prototypes (dropped at export; official 65536 / 8192)")
    ap.add_argument("--eps", type=float, default=1e-6, help="LayerNorm epsilon (timm and all "
                    "seven methods: 1e-6)")
    ap.add_argument("--name", help="model name in the spec")
    ap.add_argument("--mean", type=_floats3, help="r,g,b (default ImageNet, or the --method's "
                                                  "pretraining mean)")
    ap.add_argument("--std", type=_floats3, help="r,g,b (default ImageNet, or the --method's)")
    ap.add_argument("--selftest", action="store_true", help="numpy vs onnxruntime check")
    ap.add_argument("--bench", action="store_true",
                    help="time onnxruntime on --preset (default base) with random weights")
    ap.add_argument("--batch", type=int, default=8, help="--bench batch size")
    ap.add_argument("--threads", type=int, default=2, help="--bench intra-op threads")
    return ap


def _from_method(args, obj, source: dict, heads: int | None = None) -> dict:
    """A conversion job from a loaded (or generated) published checkpoint of --method."""
    methods = _import_methods()
    m = methods.METHODS[args.method]
    sd, info = methods.extract(args.method, obj, key=args.key, keep_head=not args.drop_head,
                               heads=heads or args.heads)
    canon = canonicalize(sd, keep_head=True)
    arch = infer_arch(canon, info["heads"], info["head_act"])
    for k, want in (("depth", arch.depth), ("dim", arch.dim), ("patch", arch.patch)):
        if getattr(args, k) is not None and getattr(args, k) != want and args.weights:
            raise ConversionError(f"--method {args.method}: the checkpoint has {k}={want}, "
                                  f"which contradicts --{k} {getattr(args, k)}")
    native = (arch.pos_grid or arch.rel_window or 14) * arch.patch
    img = args.img_size or native
    notes = info["notes"] + ([m.mean_note] if m.mean_note and not args.mean else [])
    source.update(method=args.method, wrapper=info["wrapper"], prefix=info["prefix"],
                  head_prefix=info["head_prefix"], ignored=info["ignored"],
                  notes=source.get("notes", []) + notes)
    for w in info["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return {"sd": sd, "heads": info["heads"], "img": img, "source": source,
            "head_act": info["head_act"], "method": args.method,
            "mean": args.mean or m.mean, "std": args.std or m.std}


def _from_checkpoint(args) -> dict:
    """A conversion job for --weights."""
    if args.proj_dim or args.proj_hidden or args.proj_out:
        raise SystemExit("--proj-dim/--proj-hidden/--proj-out are for random weights; a "
                         "checkpoint's head is exported as stored")
    name = args.name or os.path.splitext(os.path.basename(args.weights))[0]
    source = {"kind": "checkpoint", "file": os.path.basename(args.weights),
              "sha256": _sha256(args.weights), "key": args.key}
    if args.method:
        job = _from_method(args, _import_methods().load_object(args.weights), source)
        job["name"] = name
        return job
    if args.drop_head:
        raise SystemExit("--drop-head goes with --method (without it heads are dropped unless "
                         "--keep-head)")
    pth = _import_pth()
    raw = pth.load_any(args.weights, args.key) if args.key else pth.load_any(args.weights)
    notes: list = []
    sd = canonicalize(raw, keep_head=args.keep_head, notes=notes)
    dim = int(sd["cls_token"].shape[-1]) if "cls_token" in sd else None
    heads = args.heads or DEFAULT_HEADS.get(dim)
    if heads is None:
        raise SystemExit(f"cannot guess heads for dim={dim}; pass --heads")
    if not args.heads:
        notes.append(f"heads={heads} assumed from dim={dim}")
    arch = infer_arch(sd, heads)
    extra = unused_keys(sd, arch)
    if extra:
        notes.append(f"ignored unknown top-level tensors: {extra[:10]}")
        print(f"warning: ignoring unknown tensors {extra[:10]}", file=sys.stderr)
    sd = {k: v for k, v in sd.items() if k not in extra}
    if args.depth and args.depth != arch.depth or args.dim and args.dim != arch.dim:
        raise SystemExit(f"checkpoint has depth={arch.depth} dim={arch.dim}, which "
                         f"contradicts --depth/--dim")
    source["notes"] = notes
    return {"sd": sd, "heads": heads, "img": args.img_size or 224, "name": name,
            "source": source, "head_act": None, "method": None, "mean": args.mean,
            "std": args.std}


def _from_random(args) -> dict:
    """A conversion job for random weights (in --method's published layout if given)."""
    preset = args.preset or "tiny"
    cfg = dict(PRESETS[preset])
    for k in ("depth", "dim", "heads", "patch", "img_size"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    custom = any(getattr(args, k) is not None for k in ("depth", "dim", "heads", "patch",
                                                          "img_size"))
    source = {"kind": "random", "seed": args.seed, "preset": preset,
              "mlp_ratio": args.mlp_ratio, **cfg}
    if args.method:
        methods = _import_methods()
        obj = methods.random_published(
            args.method, cfg["depth"], cfg["dim"], cfg["heads"], cfg["patch"], cfg["img_size"],
            mlp_ratio=args.mlp_ratio, seed=args.seed, with_head=not args.drop_head,
            proj_hidden=args.proj_hidden, proj_bottleneck=args.proj_dim,
            proj_out=args.proj_out)
        job = _from_method(args, obj, source, heads=cfg["heads"])
        job["name"] = args.name or f"{args.method}-vit-{preset}{'-custom' if custom else ''}-random"
        return job
    if args.proj_hidden or args.proj_out or args.drop_head:
        raise SystemExit("--proj-hidden/--proj-out/--drop-head go with --method")
    sd = random_state_dict(cfg["depth"], cfg["dim"], cfg["heads"], cfg["patch"],
                           cfg["img_size"], mlp_ratio=args.mlp_ratio, proj_dim=args.proj_dim,
                           seed=args.seed)
    name = args.name or f"vit-{preset}{'-custom' if custom else ''}-random"
    return {"sd": sd, "heads": cfg["heads"], "img": cfg["img_size"], "name": name,
            "source": source, "head_act": None, "method": None, "mean": args.mean,
            "std": args.std}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.selftest:
        selftest()
        if not args.bench:
            return 0
    if args.bench:
        bench(args.preset or "base", args.batch, args.threads)
        return 0
    if not args.out:
        _parser().error("--out is required (or use --selftest / --bench)")
    import onnx
    try:
        job = (_from_checkpoint if args.weights else _from_random)(args)
        model = build(job["sd"], img_size=job["img"], patch=args.patch if args.weights else None,
                      heads=job["heads"], eps=args.eps, name=job["name"], source=job["source"],
                      mean=job["mean"], std=job["std"], head_act=job["head_act"],
                      method=job["method"])
    except ConversionError as e:
        raise SystemExit(f"error: {e}")
    except ValueError as e:  # unreadable checkpoint (pth.py)
        raise SystemExit(f"error: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    onnx.save(model, args.out)
    src = json.loads({p.key: p.value for p in model.metadata_props}["partlens.source"])
    for n in src.get("notes", []):
        print(f"note: {n}", file=sys.stderr)
    outs = ", ".join(f"{o.name}{[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]}"
                     for o in model.graph.output)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes): {outs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
