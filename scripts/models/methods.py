"""Per-method checkpoint layouts for ``vit.py --method`` (numpy only, no torch).

The seven pretraining methods of Zhu et al. 2023 ("Understanding
Self-Supervised Pretraining with Part-Aware Representation Learning") publish
their ViTs in different wrappers, prefixes and module layouts. This module
knows, per method, where the encoder (and its projection head, if any) lives
in the published file, checks the file against the official module layout
(first mismatching key reported with its prefix, as the file spells it), and
returns a state dict that ``vit.build`` converts. It also writes random
checkpoints in each published layout (``random_published``) for tests and
benchmarks. Read ``vit.py``'s docstring for the per-method summary; the
sources read are cited in :data:`METHODS`.

Used lazily by ``vit.py`` (only with ``--method``); imports ``vit`` for the
shared helpers.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

try:
    import vit as _vit
except ImportError:  # imported by path from elsewhere
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import vit as _vit

ConversionError = _vit.ConversionError

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
INCEPTION = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


@dataclass(frozen=True)
class Layout:
    """Where a published file keeps the encoder.

    ``wrapper``: the top-level entry holding the state dict (None: the file is
    the state dict). ``prefix``: the encoder's key prefix inside it.
    ``head_prefix``: the projection head's prefix (None: no head in this
    layout). ``what``: the file it describes.
    """

    wrapper: str | None
    prefix: str
    head_prefix: str | None
    what: str


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    source: str  # official code read for the layout
    layouts: tuple  # Layout, most specific first; the first that fits is used
    key_prefixes: tuple = ()  # further encoder prefixes tried after --key
    qkv: str = "fused"  # "fused": attn.qkv.bias; "qv": attn.q_bias + attn.v_bias (no k bias)
    pos: str = "learned"  # learned | sincos-moco | sincos-mae | optional (BEiT)
    layer_scale: bool = False  # gamma_1/gamma_2 allowed (all blocks or none)
    rel_pos: str = "no"  # no | optional | beit (required unless pos_embed)
    head: str = "none"  # none | classifier (dropped) | projector (kept as `projection`)
    head_act: str = "gelu"
    enc_ignore: tuple = ()  # regexes on encoder-relative keys that are not the encoder
    head_ignore: tuple = ()  # regexes on head-relative keys ("head.xxx") that are dropped
    head_unexpected: str = ""  # why a head is unexpected (method without projection)
    head_keys: str = ""  # regex every kept head key must match (head-relative)
    mean: list = field(default_factory=lambda: IMAGENET[0])
    std: list = field(default_factory=lambda: IMAGENET[1])
    mean_note: str = ""
    eps: float = 1e-6
    heads_by_dim: dict = field(default_factory=dict)  # overrides of vit.DEFAULT_HEADS
    proj: tuple = ()  # random weights: (hidden, bottleneck, prototypes) of the official head
    projection_doc: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method(
        "deit", "DeiT", "facebookresearch/deit models.py (timm VisionTransformer), main.py",
        layouts=(Layout("model", "", "head.", "deit_base_patch16_224-*.pth {'model': ...}"),),
        head="classifier",
        head_unexpected="",
        projection_doc="none: DeiT's head.weight/bias is the supervised ImageNet classifier "
                       "(1000 logits), not a projection; it is dropped",
    ),
    Method(
        "mocov3", "MoCo v3", "facebookresearch/moco-v3 vits.py, moco/builder.py, main_moco.py",
        layouts=(Layout("state_dict", "module.base_encoder.", "module.base_encoder.head.",
                        "vit-b-300ep.pth.tar {'state_dict': 'module.base_encoder.*', "
                        "'module.momentum_encoder.*', 'module.predictor.*'}"),),
        key_prefixes=("",),  # --key model: convert_to_deit.py output (no head)
        pos="sincos-moco", head="projector", head_act="relu", head_keys=r"head\.\d+\.\w+",
        heads_by_dim={384: 12},  # moco-v3 vit_small uses 12 heads
        proj=(4096, 256, None),
        projection_doc="the base encoder's projector head.{0..7}: 3 x [Linear(no bias) -> "
                       "BatchNorm1d] with ReLU between, the last BN affine=False (eval mode: "
                       "running stats, folded into the linears); 256-d, before the predictor",
    ),
    Method(
        "dino", "DINO", "facebookresearch/dino vision_transformer.py (DINOHead), main_dino.py, "
                        "utils.py (MultiCropWrapper)",
        layouts=(Layout("teacher", "backbone.", "head.",
                        "*_full_checkpoint.pth {'teacher': 'backbone.*' + 'head.*', "
                        "'student': 'module.*', ...}"),
                 Layout(None, "", "head.", "dino_vitbase16_pretrain.pth (backbone only)")),
        key_prefixes=("module.backbone.",),  # --key student
        head="projector", head_act="gelu", head_keys=r"head\.mlp(\.\d+)?\.(weight|bias|"
                                                     r"running_mean|running_var|"
                                                     r"num_batches_tracked)",
        head_ignore=(r"head\.last_layer\..*",),
        proj=(2048, 256, 65536),
        projection_doc="teacher head.mlp (Linear-GELU-Linear-GELU-Linear, 2048 hidden): the "
                       "raw 256-d bottleneck BEFORE the L2 normalisation and before "
                       "head.last_layer (weight-normed 65536 prototypes, dropped)",
    ),
    Method(
        "ibot", "iBOT", "bytedance/ibot models/vision_transformer.py, models/head.py "
                        "(iBOTHead), main_ibot.py, extract_backbone_weights.py",
        layouts=(Layout("teacher", "backbone.", "head.",
                        "checkpoint.pth {'teacher': 'backbone.*' + 'head.*', 'student': ...}"),
                 Layout("state_dict", "", "head.",
                        "checkpoint_teacher.pth / checkpoint_student.pth {'state_dict': "
                        "backbone (+ head.* if extracted --with_head)}")),
        key_prefixes=("module.backbone.",),  # --key student
        layer_scale=True,  # init_values > 0 option
        head="projector", head_act="gelu", head_keys=r"head\.mlp(\.\d+)?\.(weight|bias|"
                                                     r"running_mean|running_var|"
                                                     r"num_batches_tracked)",
        enc_ignore=(r"masked_embed",),
        head_ignore=(r"head\.last_layer2?\..*", r"head\.last_norm2?\..*", r"head\.mlp2\..*"),
        proj=(2048, 256, 8192),
        projection_doc="teacher head.mlp (Linear-GELU-Linear-GELU-Linear, 2048 hidden) on the "
                       "cls token: the raw 256-d bottleneck BEFORE the L2 normalisation and "
                       "before head.last_layer/last_layer2 (8192 prototypes, dropped). The "
                       "released checkpoint_teacher.pth holds no head: no projection then",
    ),
    Method(
        "mae", "MAE", "facebookresearch/mae models_mae.py, util/pos_embed.py, main_pretrain.py",
        layouts=(Layout("model", "", None, "mae_pretrain_vit_base.pth {'model': encoder} or "
                                           "mae_visualize_vit_base.pth (+ decoder_*, "
                                           "mask_token)"),),
        pos="sincos-mae",
        enc_ignore=(r"mask_token", r"decoder_embed\..*", r"decoder_pos_embed",
                    r"decoder_blocks\..*", r"decoder_norm\..*", r"decoder_pred\..*"),
        head_unexpected="MAE pretraining has no head (a head.* means a fine-tuned checkpoint: "
                        "convert it without --method)",
        projection_doc="none: MAE pretrains a pixel decoder, there is no projection head",
    ),
    Method(
        "beit", "BEiT", "microsoft/unilm beit/modeling_pretrain.py, modeling_finetune.py, "
                        "datasets.py, README.md",
        layouts=(Layout("model", "", None, "beit_base_patch16_224_pt22k.pth {'model': ...}"),
                 Layout("module", "", None, "{'module': ...}")),
        qkv="qv", pos="optional", layer_scale=True, rel_pos="beit",
        enc_ignore=(r"mask_token", r"lm_head\..*"),
        head_unexpected="BEiT pretraining has no head besides lm_head (a head.* means a "
                        "fine-tuned checkpoint: convert it without --method)",
        mean=INCEPTION[0], std=INCEPTION[1],
        mean_note="BEiT's default (0.5, 0.5, 0.5) used for the released ImageNet-22k "
                  "pretraining; its ImageNet-1k recipe (--imagenet_default_mean_and_std) used "
                  "the ImageNet mean/std: pass --mean/--std for such a checkpoint",
        projection_doc="none: BEiT predicts visual tokens with lm_head (8192 logits per "
                       "patch), not a projection; dropped",
    ),
    Method(
        "cae", "CAE", "Atten4Vis/CAE and lxtGH/CAE models/modeling_cae.py, "
                      "modeling_cae_helper.py, furnace/utils.py, tools/run_class_finetuning.py",
        layouts=(Layout("model", "encoder.", None,
                        "CAE release {'model': 'encoder.*' + regressor/decoder parts}"),
                 Layout("module", "encoder.", None, "{'module': 'encoder.*'}"),
                 Layout("state_dict", "encoder.", None, "{'state_dict': 'encoder.*'}")),
        qkv="qv", pos="sincos-moco", layer_scale=True, rel_pos="optional",
        heads_by_dim={192: 12, 384: 12},  # cae_tiny/cae_small use 12 heads
        head_unexpected="CAE's encoder has no head",
        projection_doc="none: CAE regresses masked latents and decodes visual tokens; the "
                       "encoder has no projection head",
    ),
)}

NAMES = tuple(METHODS)


def default_heads(method: str, dim: int) -> int | None:
    m = METHODS[method]
    return m.heads_by_dim.get(dim, _vit.DEFAULT_HEADS.get(dim))


# --------------------------------------------------------------------------
# Sin-cos position embeddings (computed the official ways, for checks and
# random weights)
# --------------------------------------------------------------------------


def _sincos(grid: int, dim: int, row_first: bool) -> np.ndarray:
    """``[1, 1+g*g, D]``: per token (r, c) ``[sin(u w), cos(u w), sin(v w), cos(v w)]`` with
    (u, v) = (r, c) when ``row_first`` else (c, r), ``w_k = 1 / 10000**(k / (D/4))``; the cls
    slot is zero."""
    if dim % 4:
        raise ConversionError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(q) / q)
    r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    u, v = (r, c) if row_first else (c, r)
    a, b = np.outer(u.ravel(), omega), np.outer(v.ravel(), omega)
    pe = np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], 1)
    return np.concatenate([np.zeros((1, dim)), pe])[None].astype(np.float32)


def sincos_moco(grid: int, dim: int) -> np.ndarray:
    """MoCo v3 / CAE ``build_2d_sincos_position_embedding``: ``[1, 1+g*g, D]``.

    Token (r, c) (row-major) gets ``[sin(r w), cos(r w), sin(c w), cos(c w)]``
    with ``w_k = 1 / 10000**(k / (D/4))`` (their ``meshgrid(grid_w, grid_h)``
    puts the row index in the first quarter pair); the cls slot is zero.
    """
    return _sincos(grid, dim, row_first=True)


def sincos_mae(grid: int, dim: int) -> np.ndarray:
    """MAE ``get_2d_sincos_pos_embed(cls_token=True)``: ``[1, 1+g*g, D]``.

    Token (r, c) gets ``[sin(c w), cos(c w), sin(r w), cos(r w)]`` (column
    first: MAE's ``meshgrid(grid_w, grid_h)`` is xy-indexed); cls slot zero.
    """
    return _sincos(grid, dim, row_first=False)


# --------------------------------------------------------------------------
# Finding the encoder in a loaded checkpoint
# --------------------------------------------------------------------------


def load_object(path: str):
    """The whole loaded checkpoint (wrappers kept): torch files via ``pth.load_checkpoint``,
    ``.npz``/``.safetensors`` as their flat dict."""
    pth = _vit._import_pth()
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return pth.load_checkpoint(path)
    return pth.load_any(path)


def _is_flat(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, np.ndarray) for v in obj.values()) \
        and not any(isinstance(v, dict) for v in obj.values())


def _tensors(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, np.ndarray)}


def _fits(sd: dict, prefix: str) -> bool:
    return any(prefix + k in sd for k in ("cls_token", "patch_embed.proj.weight"))


def locate(method: str, obj, key: str | None = None):
    """``(state_dict, layout, wrapper_path)`` of the encoder in a loaded checkpoint."""
    m = METHODS[method]
    err = lambda msg: ConversionError(f"--method {method}: {msg}")  # noqa: E731
    if key:
        cur = obj
        for part in key.split("/"):
            if not isinstance(cur, dict) or part not in cur:
                have = sorted(cur) if isinstance(cur, dict) else type(cur).__name__
                raise err(f"missing {part!r} (--key {key}); the checkpoint has {have}")
            cur = cur[part]
        if not isinstance(cur, dict):
            raise err(f"--key {key} is a {type(cur).__name__}, not a state dict")
        sd = _tensors(cur)
        prefixes = list(dict.fromkeys([lay.prefix for lay in m.layouts] + list(m.key_prefixes)))
        for lay in m.layouts:
            if _fits(sd, lay.prefix):
                return sd, lay, key
        for p in prefixes:
            if _fits(sd, p):
                head = p[: -len("backbone.")] + "head." if p.endswith("backbone.") else \
                    p + "head."
                return sd, Layout(key, p, head, f"--key {key}"), key
        raise err(f"missing {m.layouts[0].prefix + 'cls_token'!r} in --key {key} (tried "
                  f"prefixes {prefixes})")
    if not isinstance(obj, dict):
        raise err(f"the checkpoint is a {type(obj).__name__}, not a dict")
    flat = _is_flat(obj)
    for lay in m.layouts:
        if lay.wrapper is None or flat:
            sd = _tensors(obj)
            where = None
        elif isinstance(obj.get(lay.wrapper), dict):
            sd, where = _tensors(obj[lay.wrapper]), lay.wrapper
        else:
            continue
        if _fits(sd, lay.prefix):
            return sd, lay, where
    # Nothing fits: name the first thing the primary layout misses.
    lay = m.layouts[0]
    if lay.wrapper and not flat and lay.wrapper not in obj:
        others = [x.wrapper for x in m.layouts[1:] if x.wrapper]
        alts = f" (or {others})" if others else ""
        raise err(f"missing {lay.wrapper!r}{alts}: {m.title}'s published file is {lay.what}; "
                  f"this one has top-level keys {sorted(map(str, obj))[:12]}")
    sd = _tensors(obj if (flat or not lay.wrapper) else obj[lay.wrapper])
    first = next(iter(sd), None)
    raise err(f"missing {lay.prefix + 'cls_token'!r}: {m.title}'s encoder is under "
              f"{lay.prefix or '(no prefix)'!r} in {lay.what}; the first key here is {first!r}")


# --------------------------------------------------------------------------
# Validation against the official module layout
# --------------------------------------------------------------------------


def _group(keys) -> list:
    """``['module.momentum_encoder.* (150)', ...]`` summaries of ignored keys."""
    wrappers = {"module", "base_encoder", "backbone", "encoder", "head"}
    groups: dict = {}
    for k in keys:
        parts, take = k.split("."), []
        for part in parts:
            if part.isdigit():
                break
            take.append(part)
            if part not in wrappers:
                break
        g = ".".join(take) + (".*" if len(take) < len(parts) else "")
        groups[g] = groups.get(g, 0) + 1
    return [f"{g} ({n})" if n > 1 else g for g, n in groups.items()]


def _expected(m: Method, enc: dict, heads: int | None):
    """Official-order ``[(key, shape | None, required)]`` of the encoder.

    Shapes use the dims found in ``enc`` (None where a dim cannot be known).
    """
    cls = enc.get("cls_token")
    d = int(cls.shape[-1]) if cls is not None and cls.ndim >= 1 else None
    depth = len({int(x[1]) for k in enc if (x := re.match(r"blocks\.(\d+)\.", k))}) or 1
    fc1 = enc.get("blocks.0.mlp.fc1.weight")
    hid = int(fc1.shape[0]) if fc1 is not None and fc1.ndim == 2 else None
    pw = enc.get("patch_embed.proj.weight")
    p = int(pw.shape[-1]) if pw is not None and pw.ndim == 4 else None
    shared = "rel_pos_bias.relative_position_bias_table" in enc
    per = "blocks.0.attn.relative_position_bias_table" in enc
    rows = None
    for k in ("rel_pos_bias.relative_position_bias_table",
              "blocks.0.attn.relative_position_bias_table"):
        if k in enc and enc[k].ndim == 2:
            rows = int(enc[k].shape[0])
    w = _vit.rel_window(rows) if rows else None
    t_idx = [w * w + 1] * 2 if w else None
    gamma = m.layer_scale and "blocks.0.gamma_1" in enc
    has_pos = "pos_embed" in enc
    pe = enc.get("pos_embed")
    tok = int(pe.shape[1]) if pe is not None and pe.ndim == 3 else None

    e = [("cls_token", [1, 1, d], True)]
    if m.pos != "optional" or has_pos:
        e.append(("pos_embed", [1, tok, d], m.pos != "optional"))
    e += [("patch_embed.proj.weight", [d, 3, p, p], True), ("patch_embed.proj.bias", [d], True)]
    if m.rel_pos != "no":
        need = m.rel_pos == "beit" and not has_pos and not per
        if shared or need:
            e.append(("rel_pos_bias.relative_position_bias_table", [rows, heads], True))
            e.append(("rel_pos_bias.relative_position_index", t_idx, False))
    for i in range(depth):
        b = f"blocks.{i}."
        if gamma:
            e += [(b + "gamma_1", [d], True), (b + "gamma_2", [d], True)]
        e += [(b + "norm1.weight", [d], True), (b + "norm1.bias", [d], True)]
        if m.qkv == "qv":
            e += [(b + "attn.q_bias", [d], True), (b + "attn.v_bias", [d], True)]
        if per:
            e += [(b + "attn.relative_position_bias_table", [rows, heads], True),
                  (b + "attn.relative_position_index", t_idx, False)]
        e.append((b + "attn.qkv.weight", [3 * d if d else None, d], True))
        if m.qkv == "fused":
            e.append((b + "attn.qkv.bias", [3 * d if d else None], True))
        e += [(b + "attn.proj.weight", [d, d], True), (b + "attn.proj.bias", [d], True),
              (b + "norm2.weight", [d], True), (b + "norm2.bias", [d], True),
              (b + "mlp.fc1.weight", [hid, d], True), (b + "mlp.fc1.bias", [hid], True),
              (b + "mlp.fc2.weight", [d, hid], True), (b + "mlp.fc2.bias", [d], True)]
    e += [("norm.weight", [d], True), ("norm.bias", [d], True)]
    return e


def _shape_ok(got, want) -> bool:
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))


def _fmt(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def validate(m: Method, enc: dict, prefix: str, heads: int | None) -> list:
    """Check the encoder against the official layout; return the expected keys present."""
    err = lambda msg: ConversionError(f"--method {m.name}: {msg}")  # noqa: E731
    expected = _expected(m, enc, heads)
    for k, shape, req in expected:
        if k not in enc:
            if req:
                hint = ""
                if k == "rel_pos_bias.relative_position_bias_table":
                    hint = (f" (or per-layer '{prefix}blocks.0.attn.relative_position_bias_"
                            f"table'; BEiT needs a relative position bias when it has no "
                            f"pos_embed)")
                raise err(f"missing {prefix + k!r}{hint}")
            continue
        got = list(enc[k].shape)
        if k == "pos_embed" and shape[1] is not None:
            g = int(round((shape[1] - 1) ** 0.5))
            if g * g + 1 != shape[1]:
                raise err(f"{prefix + k!r} has shape {_fmt(got)}, expected [1, 1+g*g, "
                          f"{shape[2]}] (a cls slot plus a square grid)")
        if shape is not None and not _shape_ok(got, shape):
            raise err(f"{prefix + k!r} has shape {_fmt(got)}, expected {_fmt(shape)}")
    known = {k for k, _, _ in expected}
    ignore = [re.compile(p) for p in m.enc_ignore]
    for k in enc:
        if k in known or any(p.fullmatch(k) for p in ignore):
            continue
        why = ""
        if k == "dist_token":
            why = " (a distilled DeiT; only the non-distilled DeiT is supported)"
        elif re.fullmatch(r"blocks\.\d+\.(gamma_[12]|attn\.relative_position_\w+|attn\.[qv]_"
                          r"bias|attn\.qkv\.bias)", k):
            why = " (not consistent with block 0 or not part of this method's blocks)"
        raise err(f"unexpected {prefix + k!r}{why}: not part of {m.title}'s encoder")
    return [k for k in known if k in enc]


def _check_sincos(m: Method, enc: dict, prefix: str, notes: list, warnings: list) -> None:
    if m.pos not in ("sincos-moco", "sincos-mae") or "pos_embed" not in enc:
        return
    pe = enc["pos_embed"]
    g = int(round((pe.shape[1] - 1) ** 0.5))
    want = (sincos_moco if m.pos == "sincos-moco" else sincos_mae)(g, pe.shape[-1])
    diff = float(np.abs(pe.astype(np.float64) - want).max())
    if diff < 1e-4:
        notes.append(f"{prefix}pos_embed is {m.title}'s fixed 2-D sin-cos embedding "
                     f"(max diff {diff:.1e})")
    else:
        warnings.append(f"{prefix}pos_embed is not {m.title}'s fixed 2-D sin-cos embedding "
                        f"(max diff {diff:.2g}); converting it as stored - is this really a "
                        f"{m.title} checkpoint?")


def extract(method: str, obj, key: str | None = None, keep_head: bool = True,
            heads: int | None = None) -> tuple:
    """Find, validate and return the encoder (+ head) of a published checkpoint.

    Returns ``(state_dict, info)``: the state dict has encoder-relative keys
    (BEiT/CAE names kept; ``vit.canonicalize`` maps them) plus ``head.*``
    when the method's projection head is present and kept. ``info``:
    ``heads``, ``head_act``, ``wrapper``, ``prefix``, ``head_prefix``,
    ``ignored`` (summaries), ``notes``, ``warnings``.
    """
    if method not in METHODS:
        raise ConversionError(f"unknown --method {method!r} (one of {', '.join(NAMES)})")
    m = METHODS[method]
    err = lambda msg: ConversionError(f"--method {method}: {msg}")  # noqa: E731
    sd, lay, where = locate(method, obj, key)
    notes, warnings = [], []
    pre = lay.prefix
    hp = lay.head_prefix if lay.head_prefix is not None else pre + "head."
    enc, head, other = {}, {}, []
    for k, v in sd.items():
        if k.startswith(hp):
            head["head." + k[len(hp):]] = v
        elif k.startswith(pre):
            enc[k[len(pre):]] = v
        else:
            other.append(k)
    name = lambda k: hp + k[len("head."):]  # noqa: E731  (canonical head key -> file key)

    # heads: explicit, else the relative tables, else the method's default for the width
    dim = int(enc["cls_token"].shape[-1]) if "cls_token" in enc else None
    if heads is None:
        for k in ("rel_pos_bias.relative_position_bias_table",
                  "blocks.0.attn.relative_position_bias_table"):
            if k in enc and enc[k].ndim == 2:
                heads = int(enc[k].shape[1])
                notes.append(f"heads={heads} read from {pre + k!r}")
                break
        else:
            heads = default_heads(method, dim) if dim else None
            if heads:
                notes.append(f"heads={heads} assumed for {m.title} at dim={dim} "
                             f"(pass --heads to override)")
    if heads is None and dim is not None:
        raise err(f"cannot guess heads for dim={dim}; pass --heads")
    used = set(validate(m, enc, pre, heads))
    _check_sincos(m, enc, pre, notes, warnings)
    out = {k: v for k, v in enc.items() if k in used}
    ignored = [pre + k for k in enc if k not in used]  # matched m.enc_ignore

    head_kept = False
    if head:
        if m.head == "none":
            raise err(f"unexpected {name(next(iter(head)))!r}: {m.head_unexpected}")
        drop = [re.compile(p) for p in m.head_ignore]
        dropped = [k for k in head if any(p.fullmatch(k) for p in drop)]
        body = {k: v for k, v in head.items() if k not in dropped}
        ignored += [name(k) for k in dropped]
        if m.head == "classifier":
            bad = sorted(set(body) - {"head.weight", "head.bias"})
            if bad:
                raise err(f"unexpected {name(bad[0])!r}: {m.title}'s head is a single Linear "
                          f"classifier")
            ignored += [name(k) for k in body]
            notes.append(f"dropped {m.title}'s ImageNet classifier {hp}weight/bias "
                         f"(not a projection)")
        elif body:
            bad = [k for k in body if m.head_keys and not re.fullmatch(m.head_keys, k)]
            if bad:
                raise err(f"unexpected {name(bad[0])!r}: not part of {m.title}'s projection "
                          f"head ({m.projection_doc.split(':')[0]})")
            try:
                ops = _vit._head_ops(body, dim, m.head_act, name)
            except ConversionError as e:
                raise err(str(e)) from None
            if keep_head:
                out.update(body)
                head_kept = True
                notes.append(f"projection = {hp}* ({', '.join(_vit.head_summary(ops))}) "
                             f"on the normed cls token")
            else:
                ignored += [name(k) for k in body]
                notes.append(f"--drop-head: dropped {hp}* ({len(body)} tensors)")
    elif m.head == "projector":
        notes.append(f"no projection head in this file ({lay.what}): no 'projection' output")
    shown = _group(ignored + other)
    if where is not None and isinstance(obj, dict) and "/" not in where:
        rest = [str(k) for k in obj if k != where]
        if rest:
            shown.append("top-level " + ", ".join(rest))
    if shown:
        notes.append("ignored (not the encoder or its projection): " + ", ".join(shown[:16])
                     + (f", ... ({len(shown)} groups)" if len(shown) > 16 else ""))
    notes.insert(0, f"{m.title} layout: {lay.what}; wrapper {where!r}, encoder prefix "
                    f"{pre!r}" + (f", head prefix {hp!r}" if head_kept else ""))
    info = {"heads": heads, "head_act": m.head_act, "wrapper": where, "prefix": pre,
            "head_prefix": hp if head_kept else None, "ignored": shown,
            "notes": notes, "warnings": warnings}
    return out, info


# --------------------------------------------------------------------------
# Random checkpoints in the published layouts
# --------------------------------------------------------------------------


def _tn(rng, shape, std=0.02) -> np.ndarray:
    """Normal(0, std) truncated at +-2 std, drawn in float32 (fast for ViT-B sizes)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(x) > 2.0
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        bad = np.abs(x) > 2.0
    x *= np.float32(std)
    return x


def _encoder(m: Method, rng, depth, dim, heads, patch, img_size, mlp_ratio) -> dict:
    """Random encoder weights named as the method's encoder module."""
    tn = lambda *s: _tn(rng, s)  # noqa: E731
    small = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    grid = img_size // patch
    n = grid * grid
    hid = int(dim * mlp_ratio)
    sd = {"cls_token": tn(1, 1, dim)}
    if m.name == "beit":
        sd["mask_token"] = tn(1, 1, dim)
    if m.pos == "sincos-moco":
        sd["pos_embed"] = sincos_moco(grid, dim)
    elif m.pos == "sincos-mae":
        sd["pos_embed"] = sincos_mae(grid, dim)
    elif m.pos == "learned":
        sd["pos_embed"] = tn(1, 1 + n, dim)
    sd["patch_embed.proj.weight"] = tn(dim, 3, patch, patch)
    sd["patch_embed.proj.bias"] = small(dim)
    rows = (2 * grid - 1) ** 2 + 3
    if m.rel_pos == "beit":
        sd["rel_pos_bias.relative_position_bias_table"] = (
            rng.standard_normal((rows, heads)) * 0.5).astype(np.float32)
        sd["rel_pos_bias.relative_position_index"] = _vit.relative_position_index(grid, grid)
    for i in range(depth):
        b = f"blocks.{i}."
        if m.layer_scale and m.name != "ibot":
            sd[b + "gamma_1"] = rng.uniform(0.05, 0.5, dim).astype(np.float32)
            sd[b + "gamma_2"] = rng.uniform(0.05, 0.5, dim).astype(np.float32)
        sd[b + "norm1.weight"] = (1 + small(dim)).astype(np.float32)
        sd[b + "norm1.bias"] = small(dim)
        if m.qkv == "qv":
            sd[b + "attn.q_bias"], sd[b + "attn.v_bias"] = small(dim), small(dim)
        sd[b + "attn.qkv.weight"] = tn(3 * dim, dim)
        if m.qkv == "fused":
            sd[b + "attn.qkv.bias"] = small(3 * dim)
        sd[b + "attn.proj.weight"] = tn(dim, dim)
        sd[b + "attn.proj.bias"] = small(dim)
        sd[b + "norm2.weight"] = (1 + small(dim)).astype(np.float32)
        sd[b + "norm2.bias"] = small(dim)
        sd[b + "mlp.fc1.weight"] = tn(hid, dim)
        sd[b + "mlp.fc1.bias"] = small(hid)
        sd[b + "mlp.fc2.weight"] = tn(dim, hid)
        sd[b + "mlp.fc2.bias"] = small(dim)
    sd["norm.weight"] = (1 + small(dim)).astype(np.float32)
    sd["norm.bias"] = small(dim)
    return sd


def _bn(rng, n, affine=True) -> dict:
    d = {"running_mean": (rng.standard_normal(n) * 0.1).astype(np.float32),
         "running_var": rng.uniform(0.5, 2.0, n).astype(np.float32),
         "num_batches_tracked": np.array(1000, np.int64)}
    if affine:
        d["weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        d["bias"] = (rng.standard_normal(n) * 0.1).astype(np.float32)
    return d


def _moco_mlp(rng, layers, din, hidden, dout, last_bn=True) -> dict:
    """moco/builder.py ``_build_mlp``: Linear(no bias)-BN-ReLU ... Linear-BN(affine=False)."""
    out, i = {}, 0
    for li in range(layers):
        a = din if li == 0 else hidden
        b = dout if li == layers - 1 else hidden
        out[f"{i}.weight"] = _tn(rng, (b, a), std=a ** -0.5)
        i += 1
        if li < layers - 1:
            out.update({f"{i}.{k}": v for k, v in _bn(rng, b).items()})
            i += 2  # BN, ReLU
        elif last_bn:
            out.update({f"{i}.{k}": v for k, v in _bn(rng, b, affine=False).items()})
    return out


def _dino_head(rng, din, hidden, bottleneck, out_dim, nlayers=3) -> dict:
    """DINOHead / iBOTHead: mlp.{0,2,4} (GELU between) + weight-normed last_layer."""
    h = {}
    dims = [din] + [hidden] * (nlayers - 1) + [bottleneck]
    for j in range(nlayers):
        h[f"mlp.{2 * j}.weight"] = _tn(rng, (dims[j + 1], dims[j]))
        h[f"mlp.{2 * j}.bias"] = (rng.standard_normal(dims[j + 1]) * 0.02).astype(np.float32)
    h["last_layer.weight_g"] = np.ones((out_dim, 1), np.float32)
    h["last_layer.weight_v"] = (rng.standard_normal((out_dim, bottleneck), np.float32) * 0.02)
    return h


def random_published(method: str, depth: int, dim: int, heads: int, patch: int,
                     img_size: int, mlp_ratio: float = 4.0, seed: int = 0,
                     with_head: bool = True, proj_hidden: int | None = None,
                     proj_bottleneck: int | None = None, proj_out: int | None = None,
                     variant: str | None = None):
    """A random checkpoint object laid out as the method's published file.

    The parts the converter ignores (momentum encoder, predictor, student,
    decoders, lm_head, prototypes) are present with their own random values,
    so picking the wrong part would show. ``variant``: ``"backbone"`` for the
    backbone-only DINO / iBOT releases (default when ``with_head`` is False),
    ``"full"`` for MAE's visualize checkpoint with decoder.
    """
    m = METHODS[method]
    if dim % heads:
        raise ConversionError(f"dim {dim} is not divisible by heads {heads}")
    if img_size % patch:
        raise ConversionError(f"img_size {img_size} is not a multiple of patch {patch}")
    rng = np.random.default_rng(seed)
    hid0, bot0, out0 = m.proj or (None, None, None)
    hid, bot = proj_hidden or hid0, proj_bottleneck or bot0
    pout = proj_out or out0
    enc = _encoder(m, rng, depth, dim, heads, patch, img_size, mlp_ratio)
    other = lambda: _encoder(m, rng, depth, dim, heads, patch, img_size, mlp_ratio)  # noqa

    if method == "deit":
        sd = dict(enc)
        if with_head:
            sd["head.weight"] = _tn(rng, (1000, dim))
            sd["head.bias"] = np.zeros(1000, np.float32)
        return {"model": sd}
    if method == "mocov3":
        sd = {}
        for part, e in (("base_encoder", enc), ("momentum_encoder", other())):
            sd.update({f"module.{part}.{k}": v for k, v in e.items()})
            if with_head:
                sd.update({f"module.{part}.head.{k}": v
                           for k, v in _moco_mlp(rng, 3, dim, hid, bot).items()})
        sd.update({f"module.predictor.{k}": v
                   for k, v in _moco_mlp(rng, 2, bot, hid, bot).items()})
        return {"epoch": 300, "arch": "vit_base", "state_dict": sd}
    if method in ("dino", "ibot"):
        if not with_head or variant == "backbone":
            if method == "dino":
                return dict(enc)
            return {"state_dict": dict(enc)}
        head = _dino_head(rng, dim, hid, bot, pout or 1024)
        if method == "ibot":
            head["last_layer2.weight_g"] = head["last_layer.weight_g"]  # shared head
            head["last_layer2.weight_v"] = head["last_layer.weight_v"]
        teacher = {f"backbone.{k}": v for k, v in enc.items()}
        teacher.update({f"head.{k}": v for k, v in head.items()})
        s_enc = other()
        if method == "ibot":
            s_enc["masked_embed"] = _tn(rng, (1, dim))
        student = {f"module.backbone.{k}": v for k, v in s_enc.items()}
        student.update({f"module.head.{k}": v
                        for k, v in _dino_head(rng, dim, hid, bot, pout or 1024).items()})
        return {"student": student, "teacher": teacher, "epoch": 100}
    if method == "mae":
        sd = dict(enc)
        if variant == "full":
            dd = max(16, dim // 2)
            sd["mask_token"] = _tn(rng, (1, 1, dd))
            sd["decoder_embed.weight"] = _tn(rng, (dd, dim))
            sd["decoder_embed.bias"] = np.zeros(dd, np.float32)
            sd["decoder_pos_embed"] = sincos_mae(img_size // patch, dd)
            sd["decoder_blocks.0.norm1.weight"] = np.ones(dd, np.float32)
            sd["decoder_norm.weight"] = np.ones(dd, np.float32)
            sd["decoder_pred.weight"] = _tn(rng, (patch * patch * 3, dd))
        return {"model": sd}
    if method == "beit":
        sd = dict(enc)
        sd["lm_head.weight"] = _tn(rng, (8192 if dim >= 256 else 64, dim))
        sd["lm_head.bias"] = np.zeros(sd["lm_head.weight"].shape[0], np.float32)
        return {"model": sd}
    if method == "cae":
        sd = {f"encoder.{k}": v for k, v in enc.items()}
        sd.update({f"teacher.{k}": v for k, v in other().items()})
        sd["mask_token"] = _tn(rng, (1, 1, dim))
        sd["pretext_neck.regressor_blocks.0.cross_attn.q.weight"] = \
            _tn(rng, (dim, dim))
        sd["pretext_neck.norm.weight"] = np.ones(dim, np.float32)
        sd["pretext_neck.head.weight"] = _tn(rng, (64, dim))
        return {"model": sd}
    raise ConversionError(f"unknown method {method!r}")


# --------------------------------------------------------------------------
# Self-check (run by ``vit.py --selftest``)
# --------------------------------------------------------------------------

TINY = dict(depth=2, dim=64, heads=2, patch=16, img_size=48, proj_hidden=96,
            proj_bottleneck=32, proj_out=50)


def _convert(method: str, obj, **kw):
    kw.setdefault("heads", TINY["heads"])
    sd, info = extract(method, obj, **kw)
    model = _vit.build(sd, img_size=TINY["img_size"], heads=info["heads"], name=method,
                       head_act=info["head_act"], method=method,
                       mean=METHODS[method].mean, std=METHODS[method].std)
    return sd, info, model


def _expect_refusal(label: str, method: str, obj, want: str, **kw) -> None:
    try:
        _convert(method, obj, **kw)
    except ConversionError as e:
        if want not in str(e):
            raise AssertionError(f"{label}: message {str(e)!r} lacks {want!r}") from None
        print(f"  [ok] refused ({label}): {e}")
        return
    raise AssertionError(f"{label}: expected a refusal mentioning {want!r}")


def selftest() -> None:
    """Each method's random published layout: ORT vs numpy, features, refusals."""
    import copy
    import json

    print("per-method layouts (tiny: depth 2, dim 64, heads 2, 48 px):")
    want_proj = {"mocov3": 32, "dino": 32, "ibot": 32}
    for method in NAMES:
        obj = random_published(method, seed=11, **TINY)
        sd, info, model = _convert(method, obj)
        expect = {"cls": [2, 64], "patch_tokens": [2, 9, 64]}
        if method in want_proj:
            expect["projection"] = [2, want_proj[method]]
        _vit._compare(f"{method} ({info['wrapper']!r}, prefix {info['prefix']!r})", model, sd,
                      info["heads"], TINY["img_size"], expect=expect,
                      head_act=info["head_act"])
        spec = json.loads({p.key: p.value for p in model.metadata_props}["partlens.spec"])
        assert spec["method"] == method and spec["mean"] == METHODS[method].mean, spec
        assert (spec["outputs"]["projection"] is not None) == (method in want_proj), spec

    # variants of the published files
    v = random_published("dino", seed=12, with_head=False, **TINY)
    sd, info, model = _convert("dino", v)
    _vit._compare("dino backbone-only release (flat)", model, sd, 2, 48)
    v = random_published("ibot", seed=13, with_head=False, **TINY)
    sd, info, model = _convert("ibot", v)
    _vit._compare("ibot checkpoint_teacher.pth {'state_dict'}", model, sd, 2, 48)
    v = random_published("dino", seed=14, **TINY)
    sd, info, model = _convert("dino", v, key="student")
    assert info["prefix"] == "module.backbone." and info["head_prefix"] == "module.head."
    _vit._compare("dino --key student (module.backbone. / module.head.)", model, sd, 2, 48,
                  head_act="gelu", expect={"projection": [2, 32]})
    v = random_published("mocov3", seed=15, **TINY)
    sd, info, model = _convert("mocov3", v, keep_head=False)
    assert not any(o.name == "projection" for o in model.graph.output)
    print("  [ok] mocov3 --drop-head: no projection output")
    v = random_published("mae", seed=16, variant="full", **TINY)
    sd, info, model = _convert("mae", v)
    assert any("decoder_blocks.*" in g for g in info["ignored"]), info["ignored"]
    _vit._compare("mae visualize checkpoint (decoder_* ignored)", model, sd, 2, 48)
    # BEiT with per-layer tables (and both shared + per-layer), CAE with per-layer tables
    rng = np.random.default_rng(17)
    v = random_published("beit", seed=17, **TINY)
    for both in (False, True):
        w = copy.deepcopy(v)
        m_ = w["model"]
        if not both:
            m_.pop("rel_pos_bias.relative_position_bias_table")
            m_.pop("rel_pos_bias.relative_position_index")
        for i in range(2):
            m_[f"blocks.{i}.attn.relative_position_bias_table"] = (
                rng.standard_normal((28, 2)) * 0.5).astype(np.float32)
            m_[f"blocks.{i}.attn.relative_position_index"] = _vit.relative_position_index(3, 3)
        sd, info, model = _convert("beit", w)
        _vit._compare(f"beit per-layer tables{' + shared' if both else ''}", model, sd, 2, 48)
    w = random_published("cae", seed=18, **TINY)
    for i in range(2):
        w["model"][f"encoder.blocks.{i}.attn.relative_position_bias_table"] = (
            rng.standard_normal((28, 2)) * 0.5).astype(np.float32)
    sd, info, model = _convert("cae", w)
    _vit._compare("cae + per-layer relative position bias", model, sd, 2, 48)
    # the gather of the official index vs a direct pair-by-pair lookup, on a 5x5 grid
    tab = rng.standard_normal(((2 * 5 - 1) ** 2 + 3, 3))
    diff = float(np.abs(_vit.rel_pos_bias(tab, 5) - _vit._np_rel_bias(tab, 5)).max())
    assert diff < 1e-6, diff
    print(f"  [ok] relative_position_index gather == direct lookup (5x5, maxdiff {diff:.1e})")

    # refusals: the first mismatching key, named as in the file
    def mutated(method, fn, seed=20, **kw):
        o = random_published(method, seed=seed, **{**TINY, **kw})
        fn(o)
        return o
    sdm = lambda o: o["state_dict"]  # noqa: E731
    cases = [
        ("missing block key", "mocov3",
         mutated("mocov3", lambda o: sdm(o).pop("module.base_encoder.blocks.1.mlp.fc1.bias")),
         "missing 'module.base_encoder.blocks.1.mlp.fc1.bias'"),
        ("wrong shape", "mocov3",
         mutated("mocov3", lambda o: sdm(o).__setitem__(
             "module.base_encoder.blocks.0.mlp.fc1.weight", np.zeros((128, 32), np.float32))),
         "'module.base_encoder.blocks.0.mlp.fc1.weight' has shape [128, 32], expected "
         "[128, 64]"),
        ("missing q_bias", "beit",
         mutated("beit", lambda o: o["model"].pop("blocks.1.attn.q_bias")),
         "missing 'blocks.1.attn.q_bias'"),
        ("DINO file as BEiT", "beit", random_published("dino", **TINY), "missing 'model'"),
        ("DINO backbone as BEiT", "beit", {"model": random_published("dino", with_head=False,
                                                                     **TINY)},
         "missing 'blocks.0.attn.q_bias'"),
        ("BEiT file as MAE", "mae", random_published("beit", **TINY), "missing 'pos_embed'"),
        ("DeiT file as MAE", "mae", random_published("deit", **TINY),
         "unexpected 'head.weight'"),
        ("MAE file as CAE", "cae", random_published("mae", **TINY),
         "missing 'encoder.cls_token'"),
        ("iBOT file as DINO", "dino", random_published("ibot", **TINY),
         "unexpected 'head.last_layer2.weight_g'"),
        ("distilled DeiT", "deit",
         mutated("deit", lambda o: o["model"].__setitem__("dist_token", np.zeros((1, 1, 64),
                                                                                 np.float32))),
         "unexpected 'dist_token'"),
        ("layer scale in block 1 only", "cae",
         mutated("cae", lambda o: [o["model"].pop(f"encoder.blocks.0.gamma_{j}")
                                   for j in (1, 2)]),
         "unexpected 'encoder.blocks.1.gamma_1'"),
        ("bad relative_position_index", "beit",
         mutated("beit", lambda o: o["model"]["rel_pos_bias.relative_position_index"].__setitem__(
             (1, 2), 0)),
         "disagrees with the official relative_position_index"),
        ("moco head with a bias", "mocov3",
         mutated("mocov3", lambda o: sdm(o).__setitem__("module.base_encoder.head.3.bias",
                                                        np.zeros(7, np.float32))),
         "'module.base_encoder.head.3.bias' has shape [7], expected [96]"),
        ("heads vs table", "beit", random_published("beit", **TINY),
         "'rel_pos_bias.relative_position_bias_table' has shape [28, 2], expected [28, 4]"),
    ]
    for label, method, obj, want in cases:
        kw = {"heads": 4} if label == "heads vs table" else {}
        _expect_refusal(label, method, obj, want, **kw)
    try:
        sd, info = extract("beit", random_published("beit", **TINY))
        _vit.build(sd, img_size=64, heads=2)
    except ConversionError as e:
        assert "not implemented" in str(e) and "--img-size 48" in str(e), e
        print(f"  [ok] refused (img size vs relative window): {str(e)[:90]}...")
    else:
        raise AssertionError("expected a refusal for img_size != relative window")

    # the sibling generator's checkpoints, when it is there
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "official.py")):
        import importlib
        try:
            official = importlib.import_module("official")
            gen = official.random_checkpoint
        except Exception as e:  # noqa: BLE001 - report, don't mask the rest of the test
            print(f"  [skip] official.py not importable: {e}")
            return
        for method in NAMES:
            for with_head in (True, False):
                try:
                    obj = gen(method, depth=2, dim=64, heads=2, patch=16, img_size=48,
                              proj_hidden=96, proj_bottleneck=32, proj_out=50, seed=3,
                              with_head=with_head)
                except TypeError as e:  # the sibling changed its signature
                    print(f"  [skip] official.random_checkpoint: {e}")
                    return
                sd, info, model = _convert(method, obj, heads=2)
                _vit._compare(f"official.py {method} with_head={with_head}", model, sd, 2, 48,
                              head_act=info["head_act"])
    else:
        print("  [skip] official.py (sibling generator) not present")
