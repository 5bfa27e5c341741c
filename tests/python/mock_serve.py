"""A development stand-in for `partlens serve`: the same HTTP API with fake data, plus the
page's three files read fresh from src/serve/page on every request. Python 3 stdlib only.

    python3 tests/python/mock_serve.py [PORT]        (default 8765)
    MOCK_DELAY=1.5 python3 tests/python/mock_serve.py   (slow answers, to see the loading state)

Each POST /v1/query logs the box and the image size it read to stderr, so a box drawn on the
page can be checked against the image's own pixels.
"""

import json
import math
import os
import random
import struct
import sys
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "serve", "page")
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
DELAY = float(os.environ.get("MOCK_DELAY", "0"))
DIM = 8  # length of the fake vectors


def make_index(name, encoder, features, parts, objects, n_images, n_regions, seed):
    """A fake index: regions with labels, boxes and a random unit vector per feature."""
    rng = random.Random(seed)
    splits = ["train", "val"]
    regions = []
    for rid in range(n_regions):
        obj = rng.choice(objects)
        is_part = rng.random() < 0.84
        own = [p for p in parts if p.startswith(obj + "/")] or parts
        label = rng.choice(own) if is_part else obj
        img_no = rng.randrange(n_images)
        split = splits[img_no % 2]
        x0, y0 = rng.randrange(0, 400), rng.randrange(0, 300)
        w, h = rng.randrange(16, 200), rng.randrange(16, 200)
        box = [x0, y0, x0 + w, y0 + h]
        pad = 8
        regions.append({
            "id": rid, "image": f"img/{split}/{img_no:04d}.jpg", "split": split,
            "kind": "part" if is_part else "object", "label": label,
            "label_id": (parts + objects).index(label), "object": obj, "box": box,
            "crop_box": [max(0, x0 - pad), max(0, y0 - pad), x0 + w + pad, y0 + h + pad],
            "area": w * h,
            "_vec": {f: unit([rng.gauss(0, 1) for _ in range(DIM)]) for f in features},
        })
    labels = []
    for kind, names in (("part", parts), ("object", objects)):
        for n in names:
            count = sum(1 for r in regions if r["label"] == n and r["kind"] == kind)
            labels.append({"kind": kind, "name": n, "regions": count})
    n_parts = sum(1 for r in regions if r["kind"] == "part")
    summary = {
        "name": name, "encoder": encoder, "features": features, "labels": labels,
        "objects": objects, "splits": splits, "kinds": ["part", "object"],
        "counts": {"regions": n_regions, "parts": n_parts, "objects": n_regions - n_parts,
                   "images": n_images},
    }
    return {"summary": summary, "regions": regions}


def unit(v):
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


INDEXES = {
    ix["summary"]["name"]: ix
    for ix in [
        make_index("demo", "mobilenet_v2_imagenet", ["mean", "cls"],
                   ["person/head", "person/torso", "person/arm", "person/leg",
                    "car/wheel", "car/door", "car/window"],
                   ["person", "car"], 18, 254, 7),
        make_index("birds", "dinov2_small", ["mean"],
                   ["bird/beak", "bird/wing", "bird/tail"], ["bird"], 6, 40, 11),
    ]
}


def public(region, score=None):
    out = {k: v for k, v in region.items() if not k.startswith("_")}
    if score is not None:
        out["score"] = score
    return out


def png(width, height, pixel):
    """Encodes an RGB PNG; pixel(x, y) -> (r, g, b)."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def thumbnail(region):
    """A flat picture whose hue follows the label and whose shape follows the box."""
    x0, y0, x1, y1 = region["box"]
    w, h = x1 - x0, y1 - y0
    scale = 96 / max(w, h)
    tw, th = max(8, round(w * scale)), max(8, round(h * scale))
    hue = (region["label_id"] * 47) % 360
    base = hsv(hue, 0.45, 0.85)
    dark = hsv(hue, 0.6, 0.55)
    def pixel(x, y):
        cx, cy = (x - tw / 2) / (tw / 2), (y - th / 2) / (th / 2)
        return dark if cx * cx + cy * cy < 0.35 else base
    return png(tw, th, pixel)


def hsv(h, s, v):
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return tuple(int(255 * (t + v - c)) for t in (r, g, b))


def image_size(body):
    """(width, height) of a PNG or JPEG body, or None."""
    if body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) >= 24:
        return struct.unpack(">II", body[16:24])
    if body[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(body):
            if body[i] != 0xFF:
                i += 1
                continue
            marker = body[i + 1]
            seg_len = struct.unpack(">H", body[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", body[i + 5:i + 9])
                return w, h
            i += 2 + seg_len
    return None


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def int_param(q, name, default, lo, hi):
    raw = q.get(name, [str(default)])[0]
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}")
    if not lo <= v <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {v}")
    return v


def search(ix, q, vec_of, exclude=None):
    """Ranks the index's regions by cosine to vec_of(feature) after the filters in q."""
    feature = q.get("feature", [ix["summary"]["features"][0]])[0]
    if feature not in ix["summary"]["features"]:
        raise ApiError(400, f"index {ix['summary']['name']} has no feature {feature!r} "
                            f"(it has {', '.join(ix['summary']['features'])})")
    k = int_param(q, "k", 10, 1, 100)
    kind = q.get("kind", [""])[0]
    if kind and kind not in ("part", "object"):
        raise ApiError(400, f"kind must be part or object, got {kind!r}")
    want = {f: q.get(f, [""])[0] for f in ("label", "object", "split")}
    vec = vec_of(feature)
    hits = []
    for r in ix["regions"]:
        if kind and r["kind"] != kind:
            continue
        if any(v and r[f] != v for f, v in want.items()):
            continue
        score = sum(a * b for a, b in zip(vec, r["_vec"][feature]))
        hits.append(public(r, round(score, 6)))
    hits.sort(key=lambda h: -h["score"])
    return hits[:k]


class Handler(BaseHTTPRequestHandler):
    def send(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, value):
        self.send(status, json.dumps(value).encode(), "application/json")

    def handle_any(self, method):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        try:
            if method == "GET" and url.path in PAGE_FILES:
                name, ctype = PAGE_FILES[url.path]
                with open(os.path.join(PAGE_DIR, name), "rb") as f:
                    return self.send(200, f.read(), ctype)
            if url.path.startswith("/v1/") and DELAY:
                time.sleep(DELAY)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if method == "GET" and parts == ["v1", "indexes"]:
                return self.send_json(200, [ix["summary"] for ix in INDEXES.values()])
            if method == "POST" and parts == ["v1", "query"]:
                return self.send_json(200, self.query(q))
            if method == "GET" and len(parts) >= 4 and parts[:2] == ["v1", "regions"]:
                return self.region(parts[2], parts[3], parts[4:], q)
            raise ApiError(404, f"no such route: {method} {url.path}")
        except ApiError as e:
            return self.send_json(e.status, {"error": str(e)})

    def index(self, q_or_name):
        name = q_or_name if isinstance(q_or_name, str) else q_or_name.get("index", [""])[0]
        if not name:
            raise ApiError(400, "missing index=NAME")
        if name not in INDEXES:
            raise ApiError(404, f"no index named {name!r}")
        return INDEXES[name]

    def query(self, q):
        ix = self.index(q)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("image/jpeg", "image/png"):
            raise ApiError(415, f"send the image as image/jpeg or image/png, not {ctype or 'nothing'}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not body:
            raise ApiError(400, "empty body: send the image itself as the request body")
        size = image_size(body)
        if size is None:
            raise ApiError(400, f"cannot read the {ctype} image")
        box = None
        if "box" in q:
            try:
                box = [int(v) for v in q["box"][0].split(",")]
                assert len(box) == 4
            except (ValueError, AssertionError):
                raise ApiError(400, f"box must be x0,y0,x1,y1 integers, got {q['box'][0]!r}")
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
                raise ApiError(400, f"box {x0},{y0},{x1},{y1} is empty or outside the "
                                    f"{size[0]}x{size[1]} image")
        print(f"query: {ctype} {size[0]}x{size[1]} box={box}", file=sys.stderr)
        seed = zlib.crc32(body + repr(box).encode())
        return search(ix, q, lambda f: unit([random.Random(seed).gauss(0, 1) for _ in range(DIM)]))

    def region(self, index_name, rid, rest, q):
        ix = self.index(index_name)
        if not rid.isdigit() or int(rid) >= len(ix["regions"]):
            raise ApiError(404, f"index {index_name} has no region {rid}")
        r = ix["regions"][int(rid)]
        if rest == []:
            return self.send_json(200, public(r))
        if rest == ["thumbnail"]:
            return self.send(200, thumbnail(r), "image/png")
        if rest == ["similar"]:
            return self.send_json(200, search(ix, q, lambda f: r["_vec"][f]))
        raise ApiError(404, f"no such route: /{'/'.join(rest)}")

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"mock partlens serve on http://127.0.0.1:{port}/", file=sys.stderr)
    server.serve_forever()


if __name__ == "__main__":
    main()
