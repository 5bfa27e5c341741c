"""An independent numpy implementation of partlens's attentive probe (float64), for the literals
in src/eval/attentive/tests.rs.

The model, written directly (no linearity tricks): per region, k_t = Wk x_t + bk,
v_t = Wv x_t + bv, a = softmax_t(q . k_t / sqrt(D)), o = sum_t a_t v_t; then BatchNorm1d without
affine (eps 1e-6; training: batch mean and biased variance, running statistics updated with
momentum 0.1 and the unbiased variance; evaluation: the running statistics); logits = W z + b.
bk is given a non-zero value here although partlens keeps none: it must not change anything.

Gradients of the mean cross-entropy are taken by complex-step differentiation
(Im f(p + ih) / h, h = 1e-30: exact to rounding, no cancellation), independent of partlens's
hand-derived backward pass. Then two AdamW steps (PyTorch's formula: p *= 1 - lr*wd on the
decayed groups Wk, Wv, W; m, v moments; bias-corrected step) on the same batch.

Inputs are generated from sin/cos formulas that the Rust test repeats (B=4, T=5, D=4, C=3).
Run: python attentive_reference.py   (prints Rust constants)
"""
import numpy as np

B, T, D, C = 4, 5, 4, 3
EPS = 1e-6
LABELS = np.array([0, 2, 1, 2])


def params():
    i = np.arange(D)
    ij = np.arange(D * D).reshape(D, D)
    kj = np.arange(C * D).reshape(C, D)
    return {
        "q": 1.5 * np.sin(1.3 * i + 0.2),
        "wk": 0.8 * np.cos(0.7 * ij + 0.5),
        "wv": 0.3 * np.sin(0.9 * ij + 0.3),
        "bv": 0.1 * np.cos(2.0 * i),
        "w": 0.25 * np.sin(0.5 * kj + 1.0),
        "b": 0.05 * np.arange(C) - 0.03,
    }


def tokens():
    n = np.arange(B * T * D)
    return (np.sin(0.37 * n + 0.1) + 0.2 * np.cos(1.3 * n)).reshape(B, T, D)


BK = 0.7 * np.sin(np.arange(D) + 0.4)  # a key bias: cancels in the softmax


def forward(p, x, running=None):
    """Logits (B x C), and the batch mean and biased variance (training mode)."""
    k = np.einsum("ij,btj->bti", p["wk"], x) + BK
    v = np.einsum("ij,btj->bti", p["wv"], x) + p["bv"]
    s = np.einsum("i,bti->bt", p["q"], k) / np.sqrt(D)
    s = s - s.real.max(axis=1, keepdims=True)
    a = np.exp(s)
    a = a / a.sum(axis=1, keepdims=True)
    o = np.einsum("bt,bti->bi", a, v)
    if running is None:
        mu = o.mean(axis=0)
        var = ((o - mu) ** 2).mean(axis=0)  # no abs(): complex-step safe
    else:
        mu, var = running
    z = (o - mu) / np.sqrt(var + EPS)
    return z @ p["w"].T + p["b"], mu, var


def loss(p, x):
    logits, _, _ = forward(p, x)
    m = logits.real.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return (lse - logits[np.arange(B), LABELS]).mean()


def grads(p, x):
    h = 1e-30
    g = {}
    for name, val in p.items():
        gv = np.zeros(val.shape)
        for idx in np.ndindex(val.shape):
            pc = {k: v.astype(complex) for k, v in p.items()}
            pc[name][idx] += 1j * h
            gv[idx] = loss(pc, x).imag / h
        g[name] = gv
    return g


DECAYED = {"wk", "wv", "w"}


def adamw(p, x, steps, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    rm, rv = np.zeros(D), np.ones(D)
    for t in range(1, steps + 1):
        _, mu, var = forward(p, x)
        rm = 0.9 * rm + 0.1 * mu
        rv = 0.9 * rv + 0.1 * var * B / (B - 1)
        g = grads(p, x)
        for k in p:
            if k in DECAYED:
                p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            denom = np.sqrt(v2[k]) / np.sqrt(1 - b2**t) + eps
            p[k] = p[k] - lr / (1 - b1**t) * m[k] / denom
    return p, rm, rv


def show(name, arr):
    vals = ", ".join(repr(float(v)) for v in np.asarray(arr).ravel())
    print(f"const {name}: [f64; {np.asarray(arr).size}] = [{vals}];")


x = tokens()
p = params()
train_logits, _, _ = forward(p, x)
running = (0.2 * np.sin(1.1 * np.arange(D)), 0.5 + np.cos(0.8 * np.arange(D)) ** 2)
eval_logits, _, _ = forward(p, x, running)
show("TRAIN_LOGITS", train_logits)
show("EVAL_LOGITS", eval_logits)
print(f"const LOSS: f64 = {float(loss(p, x))!r};")
g = grads(p, x)
for k in ["q", "wk", "wv", "bv", "w", "b"]:
    show(f"GRAD_{k.upper()}", g[k])
p2, rm, rv = adamw(params(), x, 2, 0.05, 0.05)
for k in ["q", "wk", "wv", "bv", "w", "b"]:
    show(f"ADAMW2_{k.upper()}", p2[k])
show("ADAMW2_RUNNING_MEAN", rm)
show("ADAMW2_RUNNING_VAR", rv)
