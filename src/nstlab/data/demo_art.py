"""Procedural "artworks" used as the demo style images (numpy + Pillow only).

Each pattern is a short function ``f(rng) -> PIL.Image`` (256x256 RGB). ``PATTERNS``
maps file stems to them. ``generate_style_images(out_dir, seed)`` writes
``<name>.jpg`` for every pattern; with ``DEFAULT_SEED`` it reproduces the files
committed under ``nstlab/data/demo/style``. Regenerate them with::

    python -m nstlab.data.demo_art src/nstlab/data/demo/style --seed 0

Every pattern draws from its own generator, seeded with ``(seed, crc32(name))``,
so adding, removing or reordering patterns leaves the others unchanged.
"""

from __future__ import annotations

import argparse
import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
DEFAULT_SEED = 0
# Explicit encoder settings: the committed files depend on every one of them.
# (optimize=True is avoided: with 4:4:4 Pillow can under-size libjpeg's buffer.)
JPEG_SETTINGS = {
    "format": "JPEG",
    "quality": 88,
    "subsampling": "4:4:4",
    "optimize": False,
    "progressive": False,
}

Rng = np.random.Generator


# ----------------------------------------------------------------- helpers


def _coords(n: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in [0, 1), shape (n, n)."""
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n
    return x, y


def _noise(rng: Rng, x: np.ndarray, y: np.ndarray, cells: int) -> np.ndarray:
    """Periodic smooth value noise in [0, 1]; ``cells`` lattice cells per unit."""
    lat = rng.random((cells, cells))
    gx, gy = x * cells, y * cells
    x0, y0 = np.floor(gx), np.floor(gy)
    fx, fy = gx - x0, gy - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    x0, y0 = x0.astype(np.int64) % cells, y0.astype(np.int64) % cells
    x1, y1 = (x0 + 1) % cells, (y0 + 1) % cells
    top = lat[y0, x0] * (1 - fx) + lat[y0, x1] * fx
    bottom = lat[y1, x0] * (1 - fx) + lat[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _fbm(rng: Rng, x: np.ndarray, y: np.ndarray, base: int = 3, octaves: int = 4) -> np.ndarray:
    """Fractal sum of value noise, stretched to span [0, 1]."""
    total = sum(0.5**o * _noise(rng, x, y, base * 2**o) for o in range(octaves))
    return _stretch(total)


def _stretch(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-9)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def _ramp(t: np.ndarray, colours: Sequence[str]) -> np.ndarray:
    """Map t in [0, 1] through a piecewise-linear colour ramp -> float RGB (..., 3)."""
    stops = np.linspace(0.0, 1.0, len(colours))
    table = np.stack([_rgb(c) for c in colours])
    return np.stack([np.interp(t, stops, table[:, k]) for k in range(3)], axis=-1)


def _image(a: np.ndarray) -> Image.Image:
    """Float RGB array (0..255) -> 8-bit image, box-downsampled to SIZE if supersampled."""
    img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return img if img.size == (SIZE, SIZE) else img.resize((SIZE, SIZE), Image.Resampling.BOX)


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _colour(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(np.rint(c), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _voronoi(rng: Rng, cells: int, jitter: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered-grid Voronoi over SIZE px: (cell id, distance to nearest, to second nearest)."""
    cs = SIZE / cells
    grid = np.mgrid[-1 : cells + 1, -1 : cells + 1].transpose(1, 2, 0) + 0.5
    pts = (grid + jitter * (rng.random(grid.shape) - 0.5)) * cs  # (y, x) per cell
    py, px = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    cy, cx = (py // cs).astype(np.int64), (px // cs).astype(np.int64)
    dists, ids = [], []
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            p = pts[cy + dy, cx + dx]
            dists.append(np.hypot(py - p[..., 0], px - p[..., 1]))
            ids.append((cy + dy) * (cells + 2) + cx + dx)
    order = np.argsort(np.stack(dists), axis=0, kind="stable")
    d = np.take_along_axis(np.stack(dists), order[:2], axis=0)
    nearest = np.take_along_axis(np.stack(ids), order[:1], axis=0)[0]
    return nearest, d[0], d[1]


def _flow_strokes(
    rng: Rng,
    img: Image.Image,
    angle: np.ndarray,
    colour: Callable[[float, float], np.ndarray],
    n: int,
    steps: int,
    step: float,
    widths: tuple[int, int],
) -> None:
    """Draw ``n`` short strokes that follow the per-pixel ``angle`` field."""
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        x, y = rng.random(2) * SIZE
        c = colour(x, y)
        pts = [(x, y)]
        for _ in range(steps):
            a = angle[int(y) % SIZE, int(x) % SIZE]
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            pts.append((x, y))
        draw.line(pts, fill=_colour(c), width=int(rng.integers(*widths)), joint="curve")


# ---------------------------------------------------------------- patterns


def mosaic(rng: Rng) -> Image.Image:
    """Roman-style tesserae: small Voronoi tiles in earthy bands, light grout."""
    ids, d1, d2 = _voronoi(rng, 30, jitter=0.6)
    x, y = _coords()
    design = (3 * y + 0.1 * np.sin(2 * np.pi * 3 * x) + 0.15 * _fbm(rng, x, y, base=3, octaves=2)) % 1.0
    n = int(ids.max()) + 1
    count = np.maximum(np.bincount(ids.ravel(), minlength=n), 1)
    tile_t = np.bincount(ids.ravel(), design.ravel(), n) / count
    palette = ["#233d4d", "#2a9d8f", "#e9c46a", "#f4a261", "#c8553d", "#5c2a1e", "#233d4d"]
    tile_rgb = _ramp(np.floor(tile_t * 6) / 6 + 1 / 12, palette) * (0.82 + 0.3 * rng.random(n))[:, None]
    grout = _smoothstep(0.8, 2.2, d2 - d1)[..., None]
    return _image(tile_rgb[ids] * grout + _rgb("#ddd5c4") * (1 - grout))


def stained_glass(rng: Rng) -> Image.Image:
    """Large jewel-coloured cells with glowing centres and black leading."""
    ids, d1, d2 = _voronoi(rng, 6, jitter=0.9)
    x, y = _coords()
    palette = ["#a4161a", "#1d4e89", "#2b9348", "#f2a900", "#6a2c91", "#e85d04", "#0f7c8c", "#d00070"]
    table = np.stack([_rgb(c) for c in palette])[rng.integers(0, len(palette), int(ids.max()) + 1)]
    glow = (1.35 - 1.3 * d1 / (d1 + d2))[..., None]
    grain = (0.85 + 0.3 * _fbm(rng, x, y, base=24, octaves=2))[..., None]
    light = (1.15 - 0.6 * np.hypot(x - 0.5, y - 0.35))[..., None]
    lead = _smoothstep(3.0, 4.5, d2 - d1)[..., None]
    return _image(table[ids] * glow * grain * light * lead + 18 * (1 - lead))


def brush_flow(rng: Rng) -> Image.Image:
    """Impressionist garden: thick strokes following a smooth flow field."""
    x, y = _coords()
    angle = _fbm(rng, x, y, base=2, octaves=3) * 3 * np.pi
    palette = ["#1b4332", "#40916c", "#95d5b2", "#f6bd60", "#f28482", "#b5838d", "#6d6875"]
    base = _ramp(_fbm(rng, x, y, base=2, octaves=4), palette)
    img = _image(base).filter(ImageFilter.GaussianBlur(3))

    def colour(px: float, py: float) -> np.ndarray:
        return base[int(py), int(px)] * (0.75 + 0.5 * rng.random()) + rng.normal(0, 12, 3)

    _flow_strokes(rng, img, angle, colour, n=2600, steps=5, step=3.0, widths=(3, 6))
    return img


def starry_swirls(rng: Rng) -> Image.Image:
    """Night sky of swirling blue strokes around vortices, with haloed yellow stars."""
    x, y = _coords()
    vx, vy = np.ones_like(x) * 0.6, 0.25 * np.sin(6 * x)
    for _ in range(4):
        cx, cy, r = *rng.random(2), 0.12 + 0.12 * rng.random()
        w = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2) * 3
        vx, vy = vx - w * (y - cy) / r, vy + w * (x - cx) / r
    angle = np.arctan2(vy, vx)
    blues = ["#0b1d51", "#1e3f8a", "#2f6bc1", "#7fb3e6", "#d9ecf2"]
    img = _image(_ramp(y * 0.5, blues[:3]))
    _flow_strokes(
        rng,
        img,
        angle,
        lambda px, py: _ramp(rng.random() ** 1.5, blues),
        n=2400,
        steps=6,
        step=3.0,
        widths=(2, 5),
    )
    draw = ImageDraw.Draw(img)
    for i in range(9):
        cx, cy = rng.random() * SIZE, rng.random() * SIZE * 0.8
        big = 30 if i == 0 else 10 + 8 * rng.random()
        for k, r in enumerate(np.linspace(big, big * 0.25, 6)):
            c = ("#f9e076", "#fff4b8", "#e8a33d")[k % 3] if k else "#cfe3ff"
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c if k else None, outline=c, width=2)
    return img


def kandinsky_rings(rng: Rng) -> Image.Image:
    """A 4x4 grid of squares, each holding wobbly concentric circles."""
    n = 2 * SIZE
    palette = [
        "#d62828",
        "#f77f00",
        "#fcbf49",
        "#eae2b7",
        "#003049",
        "#2a9d8f",
        "#6a4c93",
        "#e76f51",
        "#8ab17d",
        "#111111",
        "#f1faee",
        "#e56b6f",
    ]
    py, px = np.mgrid[0:n, 0:n] + 0.5
    block = n // 4
    out = np.zeros((n, n, 3))
    for by in range(4):
        for bx in range(4):
            sl = np.s_[by * block : (by + 1) * block, bx * block : (bx + 1) * block]
            cx, cy = (bx + 0.5 + 0.15 * rng.normal()) * block, (by + 0.5 + 0.15 * rng.normal()) * block
            th = np.arctan2(py[sl] - cy, px[sl] - cx)
            r = np.hypot(px[sl] - cx, py[sl] - cy) * (1 + 0.05 * np.sin(3 * th + 6 * rng.random()))
            colours = rng.choice(len(palette), size=6, replace=False)
            out[sl] = _rgb(palette[colours[0]])
            for c, radius in zip(colours[1:], np.sort(rng.uniform(0.08, 0.46, 5))[::-1] * block, strict=True):
                out[sl][r < radius] = _rgb(palette[c])
    x, y = _coords(n)
    return _image(out * (0.9 + 0.15 * _fbm(rng, x, y, base=32, octaves=2))[..., None])


def pointillism(rng: Rng) -> Image.Image:
    """Seurat-like sunset landscape painted with jittered dots of colour."""
    x, y = _coords()
    sky = _ramp(np.clip(y / 0.55, 0, 1), ["#4361ee", "#9d8df1", "#ffc6a5", "#ffe8a3"])
    sun = np.hypot(x - 0.68, y - 0.38) < 0.09
    hills = y > 0.52 + 0.07 * _fbm(rng, x, y * 0, base=3, octaves=3) - 0.04
    meadow = y > 0.7 + 0.04 * np.sin(9 * x)
    scene = np.where(sun[..., None], _rgb("#ff9f1c"), sky)
    scene = np.where(hills[..., None], _ramp(y, ["#3c1642", "#6a4c93", "#6a4c93"]), scene)
    scene = np.where(meadow[..., None], _ramp((y - 0.7) / 0.3, ["#90be6d", "#43aa8b", "#277da1"]), scene)
    img = Image.new("RGB", (SIZE, SIZE), "#f6f0e1")
    draw = ImageDraw.Draw(img)
    for _ in range(9000):
        cx, cy = rng.random(2) * SIZE
        r = 1.4 + 1.4 * rng.random()
        c = scene[int(cy), int(cx)] + rng.normal(0, 30, 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_colour(c))
    return img


def mondrian(rng: Rng) -> Image.Image:
    """Recursive rectangle split in primaries with thick black lines."""
    leaves: list[tuple[float, float, float, float]] = []

    def split(x0: float, y0: float, x1: float, y1: float, depth: int) -> None:
        w, h = x1 - x0, y1 - y0
        if depth == 0 or max(w, h) < 50 or (depth < 3 and rng.random() < 0.3):
            leaves.append((x0, y0, x1, y1))
            return
        t = rng.uniform(0.3, 0.7)
        if w >= h:
            split(x0, y0, x0 + t * w, y1, depth - 1)
            split(x0 + t * w, y0, x1, y1, depth - 1)
        else:
            split(x0, y0, x1, y0 + t * h, depth - 1)
            split(x0, y0 + t * h, x1, y1, depth - 1)

    split(-4, -4, SIZE + 4, SIZE + 4, 5)
    colours = ["#f2efe6", "#d62828", "#1d3d8f", "#f4c430", "#111111", "#dcdcd4"]
    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    for box in leaves:
        c = colours[rng.choice(6, p=[0.5, 0.14, 0.12, 0.14, 0.04, 0.06])]
        draw.rectangle(box, fill=c, outline="#111111", width=6)
    x, y = _coords()
    return _image(_array(img) * (0.94 + 0.08 * _fbm(rng, x, y, base=48, octaves=2))[..., None])


def op_waves(rng: Rng) -> Image.Image:
    """Bridget-Riley-like undulating stripes whose amplitude swells mid-canvas."""
    x, y = _coords(2 * SIZE)
    amp = 0.15 + 1.1 * np.sin(np.pi * x) ** 2
    v = x * 22 + amp * np.sin(2 * np.pi * (y * 2.2 + rng.random())) + 0.4 * np.sin(9 * y)
    palette = np.stack([_rgb(c) for c in ["#1b1b3a", "#efe6d0", "#1f9e89", "#efe6d0", "#d1495b", "#efe6d0"]])
    return _image(palette[np.floor(v).astype(np.int64) % 6])


def cubist(rng: Rng) -> Image.Image:
    """Overlapping shaded facets in muted ochres and greys with dark outlines."""
    palette = ["#c9a66b", "#8c5a3c", "#5b5f54", "#a3a380", "#d8c3a5", "#3e4a61", "#b5651d", "#e8d8b0"]
    x, y = _coords()
    arr = _ramp(y, ["#6b5a4a", "#a08f7a"])
    for _ in range(34):
        cx, cy = rng.random(2) * SIZE
        angles = np.sort(rng.random(int(rng.integers(3, 6)))) * 2 * np.pi
        radii = rng.uniform(25, 85, angles.size)
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
        mask_img = Image.new("L", (SIZE, SIZE))
        ImageDraw.Draw(mask_img).polygon(pts, fill=255)
        m = (np.asarray(mask_img, dtype=np.float64) / 255 * 0.88)[..., None]
        d = rng.random() * 2 * np.pi
        shade = 0.6 + 0.6 * _stretch(x * math.cos(d) + y * math.sin(d))
        arr = arr * (1 - m) + m * _rgb(palette[int(rng.integers(len(palette)))]) * shade[..., None]
        img = _image(arr)
        ImageDraw.Draw(img).line(pts + pts[:1], fill="#2b2118", width=2)
        arr = _array(img)
    return _image(arr)


def marbled(rng: Rng) -> Image.Image:
    """Paper marbling (ebru): domain-warped noise through banded inks."""
    x, y = _coords()
    qx, qy = _fbm(rng, x, y, 2, 3), _fbm(rng, x, y, 2, 3)
    rx, ry = _fbm(rng, x + qx, y + qy, 2, 3), _fbm(rng, x + qx, y + qy, 2, 3)
    v = _fbm(rng, x + 1.2 * rx, y + 1.2 * ry, 2, 4)
    palette = ["#1d3557", "#f1faee", "#e63946", "#f1faee", "#e9c46a", "#457b9d", "#1d3557"]
    veins = np.exp(-np.abs(np.sin(v * 40)) * 10)[..., None]
    return _image(_ramp((v * 3) % 1.0, palette) * (1 - 0.3 * veins))


def crosshatch(rng: Rng) -> Image.Image:
    """Pen-and-ink hatching: more stroke directions where the tone is darker."""
    x, y = _coords(2 * SIZE)
    tone = _stretch(0.7 * _fbm(rng, x, y, base=2, octaves=4) + 0.3 * (1 - np.hypot(x - 0.4, y - 0.4)))
    wobble = _fbm(rng, x, y, base=4, octaves=2) * 0.8
    ink = np.zeros_like(x)
    for theta, level in zip((0.8, -0.8, 0.0, 1.57), (0.72, 0.52, 0.34, 0.18), strict=True):
        u = (x * math.cos(theta) + y * math.sin(theta)) * 2 * SIZE / 12 + wobble
        line = _smoothstep(0.36, 0.46, np.abs(u % 1.0 - 0.5))
        ink = np.maximum(ink, line * _smoothstep(level, level - 0.08, tone))
    paper = _rgb("#f3ead8") * (0.95 + 0.06 * _fbm(rng, x, y, base=64, octaves=1))[..., None]
    return _image(paper * (1 - ink[..., None]) + _rgb("#2b1d14") * ink[..., None])


def halftone_pop(rng: Rng) -> Image.Image:
    """Pop-art comic panel: Ben-Day dots, flat colour blobs, bold outlines."""
    n = 2 * SIZE
    x, y = _coords(n)
    f = np.zeros_like(x)
    for _ in range(4):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.2)
        f += r**2 / ((x - cx) ** 2 + (y - cy) ** 2 + 1e-6)
    u, v = (x + y) * n / 20, (x - y) * n / 20  # 45-degree dot screen, ~7 px period
    cell = np.hypot(u % 1.0 - 0.5, v % 1.0 - 0.5)
    out_dots = cell < 0.15 + 0.3 * x
    in_dots = cell < 0.3
    out = np.where(out_dots[..., None], _rgb("#e63946"), _rgb("#ffd60a"))
    inside = np.where(in_dots[..., None], _rgb("#ff8fab"), _rgb("#4cc9f0"))
    inside = np.where((f > 2.2)[..., None], _rgb("#f8f9fa"), inside)
    out = np.where((f > 1)[..., None], inside, out)
    outline = (np.abs(f - 1) < 0.12) | (np.abs(f - 2.2) < 0.15)
    return _image(np.where(outline[..., None], _rgb("#111111"), out))


def tartan(rng: Rng) -> Image.Image:
    """Woven plaid: a mirrored thread sett in a 2/2 twill weave."""
    palette = ["#1f3b73", "#0b0b0b", "#1f6f3f", "#c0392b", "#f2d16b", "#f4f1e8"]
    sett = [(palette[int(rng.integers(6))], int(rng.integers(2, 14))) for _ in range(6)]
    threads = [c for c, k in sett + sett[::-1] for _ in range(k)]
    colours = np.stack([_rgb(c) for c in threads])
    w = 2  # pixels per thread
    idx = np.arange(SIZE) // w
    warp = colours[idx % len(threads)][None, :, :].repeat(SIZE, 0)
    weft = colours[idx % len(threads)][:, None, :].repeat(SIZE, 1)
    twill = ((idx[None, :] + idx[:, None]) % 4 < 2)[..., None]
    sheen = 0.9 + 0.1 * np.cos(np.arange(SIZE) * np.pi / w)
    return _image(np.where(twill, warp * sheen[None, :, None], weft * sheen[:, None, None]))


def watercolor(rng: Rng) -> Image.Image:
    """Translucent washes with dark pooled edges on grainy paper."""
    x, y = _coords()
    paper = _rgb("#fbf8f0") * (0.95 + 0.05 * _fbm(rng, x, y, base=64, octaves=1))[..., None]
    palette = ["#2e86ab", "#e84855", "#f9dc5c", "#3bb273", "#7768ae", "#f18f01"]
    img = paper
    for i in range(7):
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.35)
        shape = 1 - np.hypot(x - cx, y - cy) / r + 0.9 * (_fbm(rng, x, y, 3, 4) - 0.5)
        blob = Image.fromarray(((shape > 0) * 255).astype(np.uint8))
        soft = np.asarray(blob.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64) / 255
        inner = np.asarray(blob.filter(ImageFilter.GaussianBlur(7)), dtype=np.float64) / 255
        grain = _fbm(rng, x, y, base=48, octaves=2)
        density = soft * (0.3 + 0.15 * grain) + 0.55 * np.clip(soft - inner, 0, 1)
        pigment = _rgb(palette[i % len(palette)]) / 255
        img = img * (1 - density[..., None] * (1 - pigment))
    return _image(img)


def klimt_gold(rng: Rng) -> Image.Image:
    """Gold-leaf ground with spirals, inlaid rectangles and eye motifs."""
    x, y = _coords()
    gold = _ramp(_fbm(rng, x, y, base=6, octaves=4), ["#7a5c12", "#c9a227", "#f3d77a", "#b8860b"])
    img = _image(gold * (0.9 + 0.2 * rng.random((SIZE, SIZE, 1))))
    draw = ImageDraw.Draw(img)
    for _ in range(28):
        x0, y0 = rng.random(2) * SIZE
        w, h = rng.uniform(6, 20, 2)
        outer, inner = rng.choice(["#111111", "#f4f1e8", "#9aa0a6", "#8e2c1f", "#2f4858"], 2, replace=False)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=str(outer))
        draw.rectangle((x0 + w / 3, y0 + h / 3, x0 + 2 * w / 3, y0 + 2 * h / 3), fill=str(inner))
    for _ in range(12):
        cx, cy = rng.random(2) * SIZE
        t = np.linspace(0, 5 * np.pi, 80)
        a = rng.uniform(0.9, 1.6)
        draw.line([(cx + a * s * math.cos(s), cy + a * s * math.sin(s)) for s in t], fill="#3b2a0a", width=2)
    for _ in range(14):
        cx, cy = rng.random(2) * SIZE
        for r, c in zip((9, 6, 3), ("#f4f1e8", "#111111", "#d4a017"), strict=True):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c)
    return img


def mandala(rng: Rng) -> Image.Image:
    """Radially symmetric rosette: mirrored wedges of petals and rings."""
    x, y = _coords(2 * SIZE)
    r = np.hypot(x - 0.5, y - 0.5) * 2
    k = int(rng.integers(8, 13))
    wedge = np.abs((np.arctan2(y - 0.5, x - 0.5) * k / (2 * np.pi)) % 1.0 - 0.5) * 2  # 0 at wedge centre
    petals = r * 9 + 1.6 * np.cos(wedge * np.pi / 2) ** 3 * (1 + np.sin(r * 7 + rng.random() * 6))
    palette = np.stack(
        [_rgb(c) for c in ["#3a0ca3", "#f72585", "#ffd166", "#06d6a0", "#118ab2", "#ef476f", "#fff1d0"]]
    )
    band = palette[(np.floor(petals).astype(np.int64) * 3) % len(palette)]
    edge = np.abs(petals % 1.0 - 0.5) > 0.44
    out = np.where(edge[..., None], _rgb("#1a1423"), band)
    return _image(np.where((r > 0.98)[..., None], _rgb("#1a1423"), out))


PATTERNS: dict[str, Callable[[Rng], Image.Image]] = {
    "mosaic": mosaic,
    "stained_glass": stained_glass,
    "brush_flow": brush_flow,
    "starry_swirls": starry_swirls,
    "kandinsky_rings": kandinsky_rings,
    "pointillism": pointillism,
    "mondrian": mondrian,
    "op_waves": op_waves,
    "cubist": cubist,
    "marbled": marbled,
    "crosshatch": crosshatch,
    "halftone_pop": halftone_pop,
    "tartan": tartan,
    "watercolor": watercolor,
    "klimt_gold": klimt_gold,
    "mandala": mandala,
}


def render_style(name: str, seed: int = DEFAULT_SEED) -> Image.Image:
    """Render one pattern as a SIZE x SIZE RGB image."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    img = PATTERNS[name](rng).convert("RGB")
    assert img.size == (SIZE, SIZE), (name, img.size)
    return img


def generate_style_images(out_dir: Path, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write ``<name>.jpg`` for every pattern into ``out_dir``; return the paths in table order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PATTERNS:
        path = out_dir / f"{name}.jpg"
        render_style(name, seed).save(path, **JPEG_SETTINGS)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    for path in generate_style_images(args.out_dir, args.seed):
        print(path)


if __name__ == "__main__":
    main()
