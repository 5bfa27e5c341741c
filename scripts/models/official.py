"""Independent numpy reference for the seven ViT-B/16 pretraining methods.

Compared in Zhu et al., "Understanding Self-Supervised Pretraining with
Part-Aware Representation Learning" (TMLR 2023): DeiT, MoCo v3, DINO, BEiT,
MAE, CAE, iBOT. This file is written from the OFFICIAL model code of each
method (cited next to each piece) and shares no code with ``vit.py``; it exists
to test that converter.

* :func:`random_checkpoint` builds, with tiny sizes and random non-trivial
  values, the Python object that ``torch.load`` gives for each method's
  PUBLISHED file: same wrapper dict, key names (prefixes included), key order,
  shapes and dtypes (int64 index buffers, int64 ``num_batches_tracked``), and
  every part the official file carries (momentum encoders, predictors,
  students, decoders, lm/vocab heads, mask tokens, loss buffers, ...).
* :func:`reference_forward` runs the official eval-mode forward in float64:
  ``cls`` (token 0 after the final norm), ``patch_tokens`` (tokens 1..N after
  the final norm; the "mean" feature is their mean) and ``projection`` (the
  pretraining projection head, for the methods that have one).

Conventions shared by all seven (each checked in the code cited below):
LayerNorm eps 1e-6 everywhere (``partial(nn.LayerNorm, eps=1e-6)``), exact
erf GELU (``nn.GELU``), attention logits scaled by ``head_dim ** -0.5``,
patch embedding = Conv2d(kernel = stride = patch) flattened row-major, pre-norm
blocks ``x + [gamma_1 *] attn(norm1(x))``, ``x + [gamma_2 *] mlp(norm2(x))``.

Where the paper's own code (JiePKU/understand-ssl-part-aware,
retrieval-classification/vits.py ``extract`` methods) differs from the
choices here: its DINO/iBOT "projection" is the whole head output (after
F.normalize and last_layer, 65536-d / 8192-d), here it is the bottleneck
before them; it normalises every method with ImageNet mean/std (its BEiT is
a self-trained ImageNet-1k checkpoint), here BEiT uses the 0.5/0.5 of the
published ImageNet-22k model; its DINO default is the student, its README
and this file use the teacher. "mean", "cls" and the MoCo v3 projector agree.

Run ``python official.py`` to print the method table and each layout's keys.
"""

from __future__ import annotations

import argparse
import collections
import math
import zlib

import numpy as np

METHODS = ("deit", "mocov3", "dino", "beit", "mae", "cae", "ibot")

# "mean" = mean of patch_tokens, "cls" = class token, "projection" = output of
# the PRETRAINING projection head applied to the cls token. DeiT's classifier,
# BEiT's lm_head (reads patch tokens), MAE's pixel decoder and CAE's
# regressor/decoder/vocab head are not projection heads.
# MoCo v3: the projection is the base encoder's 3-layer projector
# (module.base_encoder.head.*). The predictor is NOT the projection feature:
# it sits on top of the projector, exists only on the query branch (the
# momentum encoder has none) and only serves the loss asymmetry - it predicts
# the momentum encoder's projector output (moco-v3 moco/builder.py MoCo.forward:
# q = predictor(base_encoder(x)), k = momentum_encoder(x)). The paper's own
# code (JiePKU/understand-ssl-part-aware moco/builder.py MoCo.extract) also
# returns the projector output as "projection".
FEATURES = {
    "deit": ("mean", "cls"),
    "mocov3": ("mean", "cls", "projection"),
    "dino": ("mean", "cls", "projection"),
    "beit": ("mean", "cls"),
    "mae": ("mean", "cls"),
    "cae": ("mean", "cls"),
    "ibot": ("mean", "cls", "projection"),
}

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Pixel mean/std of each method's pretraining transform:
# deit datasets.py build_transform (IMAGENET_DEFAULT_*); moco-v3 main_moco.py
# `normalize`; dino main_dino.py DataAugmentationDINO; ibot main_ibot.py
# DataAugmentationiBOT; mae main_pretrain.py transform_train; CAE README /
# scripts/cae_base_800e.sh `--imagenet_default_mean_and_std`; BEiT
# run_beit_pretraining.py: `--imagenet_default_mean_and_std` defaults to False,
# so the published ImageNet-22k model (beit_base_patch16_224_pt22k) used the
# "inception" 0.5/0.5 (unilm beit/datasets.py build_beit_pretraining_dataset;
# modeling_finetune._cfg mean/std (0.5, 0.5, 0.5)).
NORMALIZATION = {
    "deit": _IMAGENET, "mocov3": _IMAGENET, "dino": _IMAGENET, "beit": _INCEPTION,
    "mae": _IMAGENET, "cae": _IMAGENET, "ibot": _IMAGENET,
}

# The file each method's authors publish (ViT-B/16, pretraining checkpoint).
# wrapper: top-level key holding the state dict (None: the file IS the state
# dict); prefix: prefix of the encoder keys inside it; head_prefix: prefix of
# the projection head used for "projection".
PUBLISHED = {
    "deit": dict(
        url="https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
        file="deit_base_patch16_224-b5f2ef4d.pth", wrapper="model", prefix="",
        head_prefix=None,
        note="supervised timm VisionTransformer; head.* is the 1000-class classifier"),
    "mocov3": dict(
        url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
        file="vit-b-300ep.pth.tar", wrapper="state_dict", prefix="module.base_encoder.",
        head_prefix="module.base_encoder.head.",
        note="DDP MoCo_ViT: base_encoder (+3-layer BN projector head), momentum_encoder, "
             "predictor; fixed sin-cos pos_embed stored"),
    "dino": dict(
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
            "dino_vitbase16_pretrain_full_checkpoint.pth",
        file="dino_vitbase16_pretrain_full_checkpoint.pth", wrapper="teacher",
        prefix="backbone.", head_prefix="head.mlp.",
        note="teacher (no DDP prefix) + student ('module.'); backbone-only "
             "dino_vitbase16_pretrain.pth is the flat teacher backbone, no head"),
    "beit": dict(
        url="https://unilm.blob.core.windows.net/beit/beit_base_patch16_224_pt22k.pth",
        file="beit_base_patch16_224_pt22k.pth", wrapper="model", prefix="", head_prefix=None,
        note="ImageNet-22k self-supervised (0.5/0.5 mean/std). No abs pos_embed; shared "
             "rel_pos_bias; q_bias/v_bias; gamma_1/2 layer scale; lm_head reads patch tokens. "
             "The paper used its own IN-1k BEiT (checkpoint-799.pth, same 'model' layout, "
             "Drive folder 1JSNzbxc9MBpNIhMRP8Vd0FFk7K5hC65q)"),
    "mae": dict(
        url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
        file="mae_pretrain_vit_base.pth", wrapper="model", prefix="", head_prefix=None,
        note="encoder only (norm.* kept); training/visualize checkpoints add "
             "mask_token + decoder_*"),
    "cae": dict(
        url="https://drive.google.com/drive/folders/1wwhg7nj2GQuU9uthVuQLkEEXEjx90G7g",
        file="cae_base_1600ep.pth", wrapper="model", prefix="encoder.", head_prefix=None,
        note="Google Drive only; encoder.* (q/v bias, layer scale, stored sin-cos "
             "pos_embed) + mask_token + pretext_neck.* (regressor, decoder, vocab head)"),
    "ibot": dict(
        url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/"
            "vitb_16/checkpoint.pth",
        file="checkpoint.pth", wrapper="teacher", prefix="backbone.", head_prefix="head.mlp.",
        note="full ckpt; checkpoint_teacher.pth (same folder) is {'state_dict': teacher "
             "backbone, no prefix, no head}"),
}

# Layout variants random_checkpoint can build (the first is the default).
VARIANTS = {
    "deit": ("model",),
    "mocov3": ("full",),
    "dino": ("full", "backbone"),        # backbone: dino_vitbase16_pretrain.pth
    "beit": ("pretrain",),
    "mae": ("encoder", "pretrain"),      # pretrain: main_pretrain checkpoint-799.pth
    "cae": ("pretrain", "atten4vis"),    # atten4vis: Atten4Vis/CAE (2023) module names
    "ibot": ("full", "teacher_backbone"),  # teacher_backbone: checkpoint_teacher.pth
}

LN_EPS = 1e-6   # every method: norm_layer=partial(nn.LayerNorm, eps=1e-6)
BN_EPS = 1e-5   # nn.BatchNorm1d default (MoCo v3 projector/predictor)


# --------------------------------------------------------------------------
# Random checkpoints
# --------------------------------------------------------------------------


class _Rand:
    """Random non-trivial tensors, float32, scaled to keep activations O(1)."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def normal(self, shape, std):
        return (self.g.standard_normal(shape) * std).astype(np.float32)

    def linear(self, sd, name, n_out, n_in, bias=True):
        sd[name + ".weight"] = self.normal((n_out, n_in), 1.0 / math.sqrt(n_in))
        if bias:
            sd[name + ".bias"] = self.normal((n_out,), 0.1)

    def norm(self, sd, name, n):
        sd[name + ".weight"] = (1.0 + self.normal((n,), 0.2)).astype(np.float32)
        sd[name + ".bias"] = self.normal((n,), 0.1)

    def gamma(self, n):
        return self.g.uniform(0.3, 1.2, n).astype(np.float32)

    def batch_norm(self, sd, name, n, affine=True):
        if affine:
            self.norm(sd, name, n)
        sd[name + ".running_mean"] = self.normal((n,), 0.2)
        sd[name + ".running_var"] = self.g.uniform(0.5, 2.0, n).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(int(self.g.integers(1, 10**6)), np.int64)


def beit_relative_position_index(g: int) -> np.ndarray:
    """BEiT's ``relative_position_index`` buffer for a g x g patch grid.

    Follows unilm beit/modeling_finetune.py RelativePositionBias.__init__:
    patch pair (i, j) -> (dy + g - 1) * (2g - 1) + (dx + g - 1); the cls row,
    cls column and cls-cls entry use the three extra table rows
    num_relative_distance - 3, - 2, - 1.
    """
    num = (2 * g - 1) ** 2 + 3
    ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])               # 2, g*g
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel = rel + (g - 1)
    idx = np.zeros((g * g + 1, g * g + 1), np.int64)
    idx[1:, 1:] = rel[..., 0] * (2 * g - 1) + rel[..., 1]
    idx[0, 0:] = num - 3
    idx[0:, 0] = num - 2
    idx[0, 0] = num - 1
    return idx


def _block(r, sd, pre, dim, hidden, style):
    """One transformer block's parameters in official state-dict order.

    style "timm": timm Block (DeiT/MoCo v3/MAE via timm; DINO & iBOT copies):
      norm1, attn.qkv (with bias), attn.proj, norm2, mlp.fc1, mlp.fc2.
    style "beit"/"cae": unilm beit modeling_finetune.Block / CAE
      modeling_cae_helper.Block: gamma_1, gamma_2 are the block's own
      parameters so state_dict lists them first; Attention keeps q_bias,
      v_bias before its submodule qkv (Linear bias=False).
    """
    if style != "timm":
        sd[pre + "gamma_1"] = r.gamma(dim)
        sd[pre + "gamma_2"] = r.gamma(dim)
    r.norm(sd, pre + "norm1", dim)
    if style == "timm":
        r.linear(sd, pre + "attn.qkv", 3 * dim, dim)
    else:
        sd[pre + "attn.q_bias"] = r.normal((dim,), 0.2)
        sd[pre + "attn.v_bias"] = r.normal((dim,), 0.2)
        r.linear(sd, pre + "attn.qkv", 3 * dim, dim, bias=False)
    r.linear(sd, pre + "attn.proj", dim, dim)
    r.norm(sd, pre + "norm2", dim)
    r.linear(sd, pre + "mlp.fc1", hidden, dim)
    r.linear(sd, pre + "mlp.fc2", dim, hidden)


_EMBED_STD = 0.03


def _encoder(r, pre, c, style, extra_params=()):
    """Encoder parameters: tokens, pos_embed, patch_embed, blocks, norm.

    Parameters owned by the ViT module itself come first (torch state_dict
    order: own _parameters, then children in registration order).
    """
    sd = collections.OrderedDict()
    d, n = c["dim"], c["grid"] ** 2
    # Token embeddings are kept small (std ~0.03) so block 0's norm1 sees a
    # variance ~1e-3, where LayerNorm eps 1e-6 vs 1e-5 changes the output by
    # ~1e-3 (above the 1e-4 test tolerance); later residuals are O(1).
    sd[pre + "cls_token"] = r.normal((1, 1, d), _EMBED_STD)
    if style in ("timm", "cae"):
        # timm/DINO/iBOT: learned; MoCo v3/MAE/CAE: fixed 2-D sin-cos, but
        # stored in the file (nn.Parameter, requires_grad=False) and read from
        # it by the official forward - random here so a recomputed table fails.
        sd[pre + "pos_embed"] = r.normal((1, n + 1, d), _EMBED_STD)
    for name, shape in extra_params:
        sd[pre + name] = r.normal(shape, 0.5)
    fan_in = 3 * c["patch"] ** 2
    sd[pre + "patch_embed.proj.weight"] = r.normal((d, 3, c["patch"], c["patch"]),
                                                   _EMBED_STD / math.sqrt(fan_in))
    sd[pre + "patch_embed.proj.bias"] = r.normal((d,), _EMBED_STD)
    if style == "beit":
        # unilm beit modeling_pretrain.VisionTransformerForMaskedImageModeling with
        # use_shared_rel_pos_bias=True (run_beit_pretraining.py: rel_pos_bias
        # defaults to True, abs_pos_emb to False): one table for all blocks.
        sd[pre + "rel_pos_bias.relative_position_bias_table"] = r.normal(
            ((2 * c["grid"] - 1) ** 2 + 3, c["heads"]), 0.5)
        sd[pre + "rel_pos_bias.relative_position_index"] = beit_relative_position_index(c["grid"])
    for i in range(c["depth"]):
        _block(r, sd, f"{pre}blocks.{i}.", d, 4 * d, style)
    r.norm(sd, pre + "norm", d)
    return sd


def _moco_mlp(r, sd, pre, num_layers, n_in, n_hidden, n_out, last_bn=True):
    """moco-v3 moco/builder.py MoCo._build_mlp: Linear(bias=False) [+ BN + ReLU]
    per hidden layer; the last Linear is followed by BatchNorm1d(affine=False)."""
    idx = 0
    for layer in range(num_layers):
        a = n_in if layer == 0 else n_hidden
        b = n_out if layer == num_layers - 1 else n_hidden
        r.linear(sd, f"{pre}{idx}", b, a, bias=False)
        if layer < num_layers - 1:
            r.batch_norm(sd, f"{pre}{idx + 1}", b)
            idx += 3                      # Linear, BatchNorm1d, ReLU
        elif last_bn:
            r.batch_norm(sd, f"{pre}{idx + 1}", b, affine=False)


def _dino_head(r, sd, pre, c, last_layer2=False):
    """dino vision_transformer.py DINOHead / ibot models/head.py iBOTHead
    (nlayers=3, use_bn/norm None, GELU): mlp.0, mlp.2, mlp.4 Linears, then a
    weight-normed last_layer (weight_g [out, 1], weight_v [out, bottleneck])."""
    d, h, bott, out = c["dim"], c["proj_hidden"], c["proj_bottleneck"], c["proj_out"]
    r.linear(sd, pre + "mlp.0", h, d)
    r.linear(sd, pre + "mlp.2", h, h)
    r.linear(sd, pre + "mlp.4", bott, h)
    sd[pre + "last_layer.weight_g"] = r.g.uniform(0.5, 1.5, (out, 1)).astype(np.float32)
    sd[pre + "last_layer.weight_v"] = r.normal((out, bott), 0.2)
    if last_layer2:
        # iBOT shared_head=True / shared_head_teacher=True: last_layer2 IS
        # last_layer, so state_dict lists the same tensors under both names.
        sd[pre + "last_layer2.weight_g"] = sd[pre + "last_layer.weight_g"]
        sd[pre + "last_layer2.weight_v"] = sd[pre + "last_layer.weight_v"]


def _prefixed(pre, sd):
    return collections.OrderedDict((pre + k, v) for k, v in sd.items())


def _optimizer_state(n):
    return {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05,
                                           "params": list(range(n))}]}


def _scaler_state():
    return {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
            "growth_interval": 2000, "_growth_tracker": 0}


def random_checkpoint(method, *, depth=2, dim=64, heads=2, patch=16, img_size=48,
                      proj_hidden=96, proj_bottleneck=32, proj_out=40, seed=0,
                      with_head=True, variant=None):
    """The object ``torch.load(PUBLISHED[method]['file'])`` would return, tiny.

    Tensors are numpy arrays (float32; int64 for index buffers and
    ``num_batches_tracked``). ``proj_hidden``/``proj_bottleneck``/``proj_out``
    size the heads (MoCo mlp_dim/dim; DINO/iBOT hidden/bottleneck/out_dim;
    DeiT classes; BEiT/CAE vocabulary). ``with_head=False`` removes the head
    parameters (projectors, predictor, classifier, lm/vocab heads) from the
    same layout. ``variant`` picks another published layout (see VARIANTS).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    variant = variant or VARIANTS[method][0]
    if variant not in VARIANTS[method]:
        raise ValueError(f"{method} has variants {VARIANTS[method]}, not {variant!r}")
    if img_size % patch or dim % heads:
        raise ValueError("img_size must be a multiple of patch and dim of heads")
    c = dict(depth=depth, dim=dim, heads=heads, patch=patch, grid=img_size // patch,
             proj_hidden=proj_hidden, proj_bottleneck=proj_bottleneck, proj_out=proj_out)
    r = _Rand([seed, zlib.crc32(method.encode())])   # different values per method
    n = c["grid"] ** 2

    if method == "deit":
        # deit models.py deit_base_patch16_224 = timm VisionTransformer(qkv_bias=True,
        # eps 1e-6); published file is {'model': state_dict}.
        sd = _encoder(r, "", c, "timm")
        if with_head:
            r.linear(sd, "head", proj_out, dim)
        return {"model": sd}

    if method == "mocov3":
        # moco-v3 vits.py VisionTransformerMoCo (timm VisionTransformer) wrapped by
        # moco/builder.py MoCo_ViT, DDP ('module.'); main_moco.py save_checkpoint.
        sd = collections.OrderedDict()
        for enc in ("base_encoder", "momentum_encoder"):
            part = _encoder(r, "", c, "timm")
            if with_head:   # MoCo_ViT: head = _build_mlp(3, D, mlp_dim, dim)
                _moco_mlp(r, part, "head.", 3, dim, proj_hidden, proj_out)
            sd.update(_prefixed(f"module.{enc}.", part))
        if with_head:       # MoCo_ViT: predictor = _build_mlp(2, dim, mlp_dim, dim)
            _moco_mlp(r, sd, "module.predictor.", 2, proj_out, proj_hidden, proj_out)
        return {"epoch": 300, "arch": "vit_base", "state_dict": sd,
                "optimizer": _optimizer_state(len(sd)), "scaler": _scaler_state()}

    if method in ("dino", "ibot"):
        ibot = method == "ibot"
        student_extra = (("masked_embed", (1, dim)),) if ibot else ()
        if variant in ("backbone", "teacher_backbone"):
            # dino: hubconf loads dino_vitbase16_pretrain.pth as a flat backbone
            # state dict; ibot: extract_backbone_weights.py -> {'state_dict': ...}.
            bb = _encoder(r, "", c, "timm")
            return {"state_dict": bb} if ibot else bb
        # main_dino.py / main_ibot.py: save_dict = {'student': DDP(MultiCropWrapper)
        # .state_dict() ('module.backbone.', 'module.head.'), 'teacher': MultiCropWrapper
        # state_dict (no DDP for ViT: no batch norms), 'optimizer', 'epoch', 'args',
        # 'dino_loss'/'ibot_loss', 'fp16_scaler'}. MultiCropWrapper sets backbone.head
        # = Identity, so the backbone has no head.* keys.
        out = {}
        for who, pre, extra in (("student", "module.", student_extra), ("teacher", "", ())):
            part = _prefixed("backbone.", _encoder(r, "", c, "timm", extra))
            if with_head:
                head = collections.OrderedDict()
                _dino_head(r, head, "", c, last_layer2=ibot)
                part.update(_prefixed("head.", head))
            out[who] = _prefixed(pre, part)
        out["optimizer"] = _optimizer_state(len(out["student"]))
        out["epoch"] = 400 if ibot else 100
        out["args"] = argparse.Namespace(arch="vit_base", patch_size=16, out_dim=proj_out,
                                         norm_last_layer=not ibot, use_bn_in_head=False)
        if ibot:
            out["ibot_loss"] = {"center": r.normal((1, proj_out), 0.1),
                                "center2": r.normal((1, 1, proj_out), 0.1)}
        else:
            out["dino_loss"] = {"center": r.normal((1, proj_out), 0.1)}
        out["fp16_scaler"] = _scaler_state()
        return out

    if method == "beit":
        # modeling_pretrain.VisionTransformerForMaskedImageModeling: own params
        # cls_token, mask_token (no pos_embed), then patch_embed, rel_pos_bias,
        # blocks, norm, lm_head (vocab 8192 -> proj_out).
        sd = _encoder(r, "", c, "beit", extra_params=(("mask_token", (1, 1, dim)),))
        if with_head:
            r.linear(sd, "lm_head", proj_out, dim)
        return {"model": sd}

    if method == "mae":
        enc = _encoder(r, "", c, "timm")
        if variant == "encoder":
            return {"model": enc}     # mae_pretrain_vit_base.pth
        # models_mae.MaskedAutoencoderViT full state dict (misc.save_model):
        # own params cls_token, pos_embed, mask_token, decoder_pos_embed, then
        # patch_embed, blocks, norm, decoder_embed, decoder_blocks, decoder_norm,
        # decoder_pred. Decoder width dim // 2, one block.
        dd = dim // 2
        sd = collections.OrderedDict()
        sd["cls_token"], sd["pos_embed"] = enc.pop("cls_token"), enc.pop("pos_embed")
        sd["mask_token"] = r.normal((1, 1, dd), 0.5)
        sd["decoder_pos_embed"] = r.normal((1, n + 1, dd), 0.5)
        sd.update(enc)
        r.linear(sd, "decoder_embed", dd, dim)
        _block(r, sd, "decoder_blocks.0.", dd, 4 * dd, "timm")
        r.norm(sd, "decoder_norm", dd)
        if with_head:
            r.linear(sd, "decoder_pred", 3 * patch * patch, dd)
        return {"model": sd, "optimizer": _optimizer_state(len(sd)), "epoch": 799,
                "scaler": _scaler_state(),
                "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}

    # CAE. Released weights (June 2022) come from the PyTorch code now at
    # lxtGH/CAE (models/modeling_cae.py VisionTransformerForMaskedImageModeling):
    # own param mask_token, children encoder, teacher (popped by
    # furnace/utils.py save_model), pretext_neck (VisionTransformerNeck:
    # regressor_blocks, decoder_blocks, norm, norm2, head). Atten4Vis/CAE (2023)
    # renamed them: rd_pos_embed, mask_token, encoder, alignment_encoder (kept:
    # save_model only pops 'teacher.'), regresser, decoder.
    sd = collections.OrderedDict()
    enc = _encoder(r, "", c, "cae")
    atten = variant == "atten4vis"
    if atten:
        sd["rd_pos_embed"] = r.normal((1, n + 1, dim), 0.5)
    sd["mask_token"] = r.normal((1, 1, dim), 0.5)
    sd.update(_prefixed("encoder.", enc))
    if atten:
        sd.update(_prefixed("alignment_encoder.", _encoder(r, "", c, "cae")))
    neck = collections.OrderedDict()
    rb = "regressor_blocks.0."   # modeling_cae_helper.RegressorBlock (cross attention)
    neck[rb + "gamma_1_cross"], neck[rb + "gamma_2_cross"] = r.gamma(dim), r.gamma(dim)
    for nm in ("norm1_q", "norm1_k", "norm1_v", "norm2_cross"):
        r.norm(neck, rb + nm, dim)
    neck[rb + "cross_attn.q_bias"] = r.normal((dim,), 0.2)
    neck[rb + "cross_attn.v_bias"] = r.normal((dim,), 0.2)
    for nm in ("q", "k", "v"):
        r.linear(neck, rb + "cross_attn." + nm, dim, dim, bias=False)
    r.linear(neck, rb + "cross_attn.proj", dim, dim)
    r.linear(neck, rb + "mlp_cross.fc1", 4 * dim, dim)
    r.linear(neck, rb + "mlp_cross.fc2", dim, 4 * dim)
    if atten:
        r.norm(neck, "norm", dim)
        sd.update(_prefixed("regresser.", neck))
        neck = collections.OrderedDict()
    _block(r, neck, "decoder_blocks.0.", dim, 4 * dim, "cae")
    r.norm(neck, "norm", dim)          # lxtGH: norm follows the regressor, norm2 the decoder
    if not atten:
        r.norm(neck, "norm2", dim)
    if with_head:
        r.linear(neck, "head", proj_out, dim)
    sd.update(_prefixed("decoder." if atten else "pretext_neck.", neck))
    return {"model": sd, "epoch": 1599,
            "args": argparse.Namespace(model="cae_base_patch16_224_8k_vocab")}


# --------------------------------------------------------------------------
# Locating the weights (each method's own loading recipe)
# --------------------------------------------------------------------------


def locate(method, ckpt) -> dict:
    """Where the encoder and projection head sit in ``ckpt``.

    Returns dict(wrapper=key or None, prefix=encoder key prefix,
    head_prefix=projection head prefix or None). Follows the official loaders:
    moco-v3 convert_to_deit.py ('state_dict', 'module.base_encoder.'); dino
    utils.load_pretrained_weights / the paper's code ('teacher', 'backbone.');
    ibot extract_backbone_weights.py ('state_dict'); mae/deit/beit ['model'];
    CAE tools/run_class_finetuning.py (model_key 'model', strip 'encoder.').
    """
    if method == "mocov3":
        return dict(wrapper="state_dict", prefix="module.base_encoder.",
                    head_prefix="module.base_encoder.head.")
    if method in ("dino", "ibot"):
        if isinstance(ckpt, dict) and "teacher" in ckpt:
            return dict(wrapper="teacher", prefix="backbone.", head_prefix="head.mlp.")
        return dict(wrapper="state_dict" if method == "ibot" else None, prefix="",
                    head_prefix=None)
    return dict(wrapper="model", prefix="encoder." if method == "cae" else "", head_prefix=None)


_ENCODER_TOP = ("cls_token", "pos_embed", "patch_embed.", "rel_pos_bias.", "blocks.", "norm.")


def _parts(method, ckpt):
    """(encoder state dict without prefix, head state dict without prefix)."""
    loc = locate(method, ckpt)
    sd = ckpt[loc["wrapper"]] if loc["wrapper"] else ckpt
    pre, hpre = loc["prefix"], loc["head_prefix"]
    enc = {k[len(pre):]: v for k, v in sd.items()
           if k.startswith(pre) and k[len(pre):].startswith(_ENCODER_TOP)}
    head = {k[len(hpre):]: v for k, v in sd.items() if k.startswith(hpre)} if hpre else {}
    return enc, head


# --------------------------------------------------------------------------
# Reference forward (float64)
# --------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))     # nn.GELU (exact)


def _layer_norm(x, sd, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)          # biased, as nn.LayerNorm
    return (x - mu) / np.sqrt(var + LN_EPS) * sd[name + ".weight"] + sd[name + ".bias"]


def _linear(x, sd, name):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def _batch_norm(x, sd, name):
    """nn.BatchNorm1d in eval mode: running statistics; affine=False has no weight."""
    y = (x - sd[name + ".running_mean"]) / np.sqrt(sd[name + ".running_var"] + BN_EPS)
    if name + ".weight" in sd:
        y = y * sd[name + ".weight"] + sd[name + ".bias"]
    return y


def _rel_bias(sd, pre, n_tok):
    """unilm beit RelativePositionBias.forward: table[index] -> [heads, N+1, N+1]."""
    table = sd[pre + "relative_position_bias_table"]
    index = sd[pre + "relative_position_index"].astype(np.int64)
    return table[index.reshape(-1)].reshape(n_tok, n_tok, -1).transpose(2, 0, 1)


def _attention(x, sd, pre, heads, rel_bias):
    """timm/DINO/iBOT Attention; beit modeling_finetune.Attention; CAE
    modeling_cae_helper.Attention. BEiT/CAE: qkv Linear has no bias; the bias
    is cat(q_bias, zeros, v_bias) (k gets none)."""
    b, n, d = x.shape
    if pre + "q_bias" in sd:
        bias = np.concatenate([sd[pre + "q_bias"], np.zeros_like(sd[pre + "v_bias"]),
                               sd[pre + "v_bias"]])
    else:
        bias = sd.get(pre + "qkv.bias", 0.0)
    qkv = x @ sd[pre + "qkv.weight"].T + bias
    qkv = qkv.reshape(b, n, 3, heads, -1).transpose(2, 0, 3, 1, 4)   # 3, B, H, N, hd
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(0, 1, 3, 2)
    if pre + "relative_position_bias_table" in sd:                  # per-block table
        logits = logits + _rel_bias(sd, pre, n)[None]
    if rel_bias is not None:                                         # shared table
        logits = logits + rel_bias[None]
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return _linear(y, sd, pre + "proj")


def encoder_forward(enc: dict, pixels: np.ndarray, heads: int) -> np.ndarray:
    """All tokens after the final norm, [B, 1+N, D], for a prefix-free encoder.

    timm VisionTransformer.forward_features / dino & ibot prepare_tokens+forward
    / mae forward_encoder with no masking / beit forward_features with no
    masked position / CAE VisionTransformerEncoder.forward_features with no
    masked position: patch embed, prepend cls, add pos_embed (if any), blocks
    (shared rel_pos_bias passed to each), final norm.
    """
    sd = {k: np.asarray(v, np.float64) if v.dtype != np.int64 else v for k, v in enc.items()}
    w = sd["patch_embed.proj.weight"]
    dim, _, p, _ = w.shape
    b, ch, hh, ww = pixels.shape
    gh, gw = hh // p, ww // p
    x = pixels.astype(np.float64).reshape(b, ch, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)
    x = x.reshape(b, gh * gw, ch * p * p) @ w.reshape(dim, -1).T + sd["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(sd["cls_token"].reshape(1, 1, dim), (b, 1, dim)), x], 1)
    if "pos_embed" in sd:
        x = x + sd["pos_embed"].reshape(1, -1, dim)
    shared = (_rel_bias(sd, "rel_pos_bias.", x.shape[1])
              if "rel_pos_bias.relative_position_bias_table" in sd else None)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        pre = f"blocks.{i}."
        y = _attention(_layer_norm(x, sd, pre + "norm1"), sd, pre + "attn.", heads, shared)
        x = x + sd.get(pre + "gamma_1", 1.0) * y
        y = _linear(_gelu(_linear(_layer_norm(x, sd, pre + "norm2"), sd, pre + "mlp.fc1")),
                    sd, pre + "mlp.fc2")
        x = x + sd.get(pre + "gamma_2", 1.0) * y
    return _layer_norm(x, sd, "norm")


def _sequential_head(x, head, act):
    """Apply an nn.Sequential of Linear / BatchNorm1d / activation modules.

    MoCo v3 _build_mlp: activation (ReLU) follows each BN that is not the last
    module; DINO/iBOT DINOHead.mlp: activation (GELU) follows each hidden
    Linear (after its BN when use_bn). Indices are the Sequential positions.
    """
    idx = sorted({int(k.split(".")[0]) for k in head})
    last = idx[-1]
    for j in idx:
        name = str(j)
        if name + ".running_mean" in head:
            x = _batch_norm(x, head, name)
        else:
            x = _linear(x, head, name)
        if j != last and not (str(j + 1) + ".running_mean" in head):
            x = act(x)
    return x


def reference_forward(method, ckpt, pixels, *, heads=2) -> dict:
    """Official eval-mode features in float64.

    ``pixels``: [B, 3, H, W] already normalised with NORMALIZATION[method];
    H = W = the pretraining grid * patch (no pos-embed interpolation). Returns
    {"cls": [B, D], "patch_tokens": [B, N, D]} plus "projection" [B, P] when
    the method has a projection head and ``ckpt`` carries it:
    * mocov3: base_encoder.head (projector) on the cls token - timm
      VisionTransformer.forward = head(pre_logits(norm(x)[:, 0])) - ending in
      the affine-free BatchNorm; eval BN uses running statistics.
    * dino/ibot: teacher head.mlp (Linear-GELU-Linear-GELU-Linear) on the cls
      token (MultiCropWrapper -> DINOHead / iBOTHead.forward x[:, 0]), i.e. the
      bottleneck BEFORE F.normalize and last_layer.
    """
    enc, head = _parts(method, ckpt)
    if not enc:
        raise ValueError(f"no {method} encoder found in the checkpoint")
    tokens = encoder_forward(enc, np.asarray(pixels), heads)
    out = {"cls": tokens[:, 0], "patch_tokens": tokens[:, 1:]}
    if "projection" in FEATURES[method] and head:
        h = {k: np.asarray(v, np.float64) if v.dtype != np.int64 else v for k, v in head.items()}
        if "weight" in h:                                  # DINOHead nlayers=1: mlp = Linear
            out["projection"] = out["cls"] @ h["weight"].T + h.get("bias", 0.0)
        else:
            act = (lambda z: np.maximum(z, 0.0)) if method == "mocov3" else _gelu
            out["projection"] = _sequential_head(out["cls"], h, act)
    return out


# --------------------------------------------------------------------------


def _main():
    print("| method | wrapper | encoder prefix | head prefix | features | mean / std | file |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        p = PUBLISHED[m]
        mean, std = NORMALIZATION[m]
        print(f"| {m} | {p['wrapper']} | `{p['prefix']}` | `{p['head_prefix']}` | "
              f"{', '.join(FEATURES[m])} | {mean} / {std} | [{p['file']}]({p['url']}) |")
    for m in METHODS:
        for v in VARIANTS[m]:
            ck = random_checkpoint(m, variant=v)
            loc = locate(m, ck)
            sd = ck[loc["wrapper"]] if loc["wrapper"] else ck
            top = [k for k in ck if not hasattr(ck[k], "shape")] if loc["wrapper"] else []
            print(f"\n{m}/{v}: top-level {top}, {len(sd)} tensors under "
                  f"{loc['wrapper']!r}, e.g. {list(sd)[:4]} ... {list(sd)[-3:]}")


if __name__ == "__main__":
    _main()
