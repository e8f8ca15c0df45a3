"""Seeded, disjoint train/val/test (content, style) pairs, with pre-resized image caches.

1. Contents and styles are each shuffled (seeded) into train/val/test images. `pairing`
   one_to_one (NST-Project dataloader.py: content[i] with style[i], each image in one pair):
   split sizes follow the pairs asked, one image per pair and role. random: split sizes grow
   with √(pairs asked), since a split of c contents and s styles holds c·s distinct pairs; this
   gives every split the same head-room over its request. Test images appear in no other
   split, so test pairs are unseen. Images of one source (the demo's crops of one photo,
   named `<source>_<crop>`) form a group that stays in one split: a crop of a test photo in
   the training set would leak it.
2. Every image is decoded once by the safe loader and cached as PNG: train/val squashed to
   image_size² (the paper's set-up: aspect not kept; `resample` bilinear, small content images
   first upscaled with LANCZOS, as NST-Project dataloader.py, or bicubic), test with its aspect
   ratio and the longer side capped at test_max_side. ViT-LoRA training never decodes a
   full-size JPEG; the baselines' own pipeline (nstlab.data.crops) reads the usable sources
   images.csv lists. An unusable image is dropped from its split (the other images stay where
   they are) and listed in skipped.csv.
3. Each split draws its pairs from its own seeded RNG, so changing n_test leaves the train draw
   of a fixed image split alone: one_to_one zips the split's two seeded shuffles (n pairs use n
   distinct contents and n distinct styles); random draws n distinct pairs uniformly from all
   contents × styles, so an image appears in several pairs and some in none.

Paths in the CSVs are the cached files' paths as `cache_dir` was given: the pipeline passes
the repo-relative `data/cache`, so the CSVs are machine-independent and resolve from the repo
root (PairDataset takes a `root` for other working dirs).
"""

import csv
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from rich.progress import track

from nstlab.data.images import load_rgb, resize_exact, resize_max_side, save_image
from nstlab.errors import ConfigError, ImageError

SPLITS = ("train", "val", "test")
PAIRINGS = ("one_to_one", "random")
IMAGES_CSV = "images.csv"  # every usable image's split, role, source file and cached copy
ROLES = ("content", "style")


@dataclass(frozen=True)
class PairSummary:
    pairs: Mapping[str, int]  # split → pairs written
    images: Mapping[str, Mapping[str, int]]  # split → {"content": n, "style": n} usable images
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of unusable images
    seed: int


@dataclass(frozen=True)
class _CacheJob:
    role: str
    split: str
    source: Path


def build_pairs(
    content_files: Iterable[Path],
    style_files: Iterable[Path],
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    image_size: int,
    cache_dir: Path | str,
    out_dir: Path | str,
    test_max_side: int = 512,
    max_pixels: int = 64_000_000,
    min_side: int = 16,
    workers: int | None = None,
    group_of: Mapping[str, Callable[[Path], str]] | None = None,
    progress: bool = True,
    pairing: str = "one_to_one",
    resample: str = "bilinear",
) -> PairSummary:
    """Write out_dir/{train,val,test}.csv (header `content,style`), skipped.csv and pairs.json.

    Same inputs and seed → byte-identical files. Asking for more pairs than a split can hold
    raises ConfigError naming the key and the maximum. `group_of` maps a role to the function
    naming an image's source group (default: every image its own group). `pairing` and
    `resample`: see the module docstring (data.pairing, data.resample).
    """
    requested = {"train": n_train, "val": n_val, "test": n_test}
    plans = {
        role: _plan_splits(
            [Path(path) for path in files],
            requested,
            seed,
            role,
            (group_of or {}).get(role, Path.as_posix),
            pairing=pairing,
        )
        for role, files in zip(ROLES, (content_files, style_files))
    }
    _check_capacity(plans, requested, pairing)

    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    jobs = [_CacheJob(role, split, path) for role in ROLES for split in SPLITS for path in plans[role][split]]

    def cache(job: _CacheJob) -> tuple[Path | None, str]:
        try:
            image = load_rgb(job.source, max_pixels=max_pixels, min_side=min_side)
        except ImageError as error:
            return None, str(error).removeprefix(f"{job.source}: ")
        if job.split == "test":
            return save_image(resize_max_side(image, test_max_side), _cache_path(cache_dir / "test", job)), ""
        squashed = squash(image, image_size, job.role, resample)
        return save_image(squashed, _cache_path(cache_dir / "train_val", job)), ""

    usable = {role: {split: [] for split in SPLITS} for role in ROLES}
    sources = []  # (split, role, source, cached) of every usable image: images.csv
    skipped = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:  # Pillow decodes without the GIL
        outcomes = track(pool.map(cache, jobs), total=len(jobs), description="resize", disable=not progress)
        for job, (cached, reason) in zip(jobs, outcomes):
            if cached is None:
                skipped.append((job.source.as_posix(), reason))
            else:
                usable[job.role][job.split].append(cached)
                sources.append((job.split, job.role, job.source.as_posix(), cached.as_posix()))
    _check_capacity(usable, requested, pairing)

    out_dir.mkdir(parents=True, exist_ok=True)
    draw = _one_to_one_pairs if pairing == "one_to_one" else _draw_pairs
    for split in SPLITS:
        pairs = draw(
            usable["content"][split],
            usable["style"][split],
            requested[split],
            random.Random(f"pairs-{split}:{seed}"),
        )
        _write_csv(
            out_dir / f"{split}.csv", ("content", "style"), [(c.as_posix(), s.as_posix()) for c, s in pairs]
        )
    _write_csv(out_dir / "skipped.csv", ("path", "reason"), skipped)
    _write_csv(out_dir / IMAGES_CSV, ("split", "role", "source", "cached"), sources)
    summary = PairSummary(
        pairs=requested,
        images={split: {role: len(usable[role][split]) for role in ROLES} for split in SPLITS},
        skipped=tuple(skipped),
        seed=seed,
    )
    report = {
        "seed": seed,
        "pairing": pairing,
        "image_size": image_size,
        "resample": resample,
        "test_max_side": test_max_side,
        "pairs": summary.pairs,
        "images": summary.images,
        "skipped": len(skipped),
    }
    (out_dir / "pairs.json").write_text(json.dumps(report, indent=2) + "\n")
    return summary


def squash(image: Image.Image, size: int, role: str, resample: str) -> Image.Image:
    """A train/val image as size×size. bilinear: NST-Project dataloader.py, which first resizes a
    content image narrower or lower than 224 (its size) to 224² with LANCZOS, then applies
    torchvision's Resize((224, 224)), bilinear (a no-op on the upscaled image); bicubic: one
    bicubic resize for every image."""
    if resample == "bilinear" and role == "content" and min(image.size) < size:
        return resize_exact(image, size, "lanczos")
    return resize_exact(image, size, resample)


def split_sizes(n_images: int, requested: Mapping[str, int], pairing: str = "random") -> dict[str, int]:
    """Images per split, at least one each, summing to n_images: ∝ pairs requested (one_to_one:
    one image per pair) or ∝ √(pairs requested) (random)."""
    weights = {
        split: requested[split] if pairing == "one_to_one" else math.sqrt(requested[split])
        for split in SPLITS
    }
    ideal = {split: n_images * weight / sum(weights.values()) for split, weight in weights.items()}
    sizes = dict.fromkeys(SPLITS, 1)
    for _ in range(n_images - len(SPLITS)):
        neediest = max(SPLITS, key=lambda split: ideal[split] - sizes[split])
        sizes[neediest] += 1
    return sizes


def _plan_splits(
    files: list[Path],
    requested: Mapping[str, int],
    seed: int,
    role: str,
    group_of: Callable[[Path], str],
    *,
    pairing: str = "random",
) -> dict[str, list[Path]]:
    """Whole groups to splits in seeded order: test, then val, take the groups that fit in their
    share of images (split_sizes; the smallest group if none fits), always leaving one group for each
    split after them; train takes the rest."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(set(files)):
        groups.setdefault(group_of(path), []).append(path)
    if len(groups) < len(SPLITS):
        n_files = sum(map(len, groups.values()))
        sources = f" from {len(groups)} sources" if len(groups) < n_files else ""
        raise ConfigError(
            f"{n_files} {role} images given{sources}: need at least {len(SPLITS)} (one per split); "
            f"add {role} images or raise the number downloaded"
        )
    order = sorted(groups)
    random.Random(f"split-{role}:{seed}").shuffle(order)
    targets = split_sizes(sum(map(len, groups.values())), requested, pairing)
    plan = {}
    for later, split in ((2, "test"), (1, "val")):  # `later`: splits still to fill after this one
        chosen, n_images = [], 0
        for name in list(order):
            if n_images + len(groups[name]) <= targets[split] and len(order) > later:
                chosen.append(name)
                order.remove(name)
                n_images += len(groups[name])
        if not chosen:
            chosen.append(min(order, key=lambda name: len(groups[name])))
            order.remove(chosen[0])
        plan[split] = sorted(path for name in chosen for path in groups[name])
    plan["train"] = sorted(path for name in order for path in groups[name])
    return {split: plan[split] for split in SPLITS}


def _check_capacity(
    images: Mapping[str, Mapping[str, list]], requested: Mapping[str, int], pairing: str
) -> None:
    for split in SPLITS:
        n_content, n_style = len(images["content"][split]), len(images["style"][split])
        if pairing == "one_to_one" and requested[split] > min(n_content, n_style):
            raise ConfigError(
                f"data.n_{split}={requested[split]}: data.pairing one_to_one needs {requested[split]} "
                f"distinct {split} images per role, and {n_content} content and {n_style} style are "
                f"usable; lower data.n_{split} to at most {min(n_content, n_style)}, add images, or set "
                "data.pairing: random (distinct pairs, images repeated)"
            )
        if requested[split] > n_content * n_style:
            raise ConfigError(
                f"data.n_{split}={requested[split]}: only {n_content * n_style} distinct {split} pairs "
                f"exist ({n_content} content × {n_style} style usable images); lower data.n_{split} "
                f"to at most {n_content * n_style} or add images"
            )


def _draw_pairs(
    contents: list[Path], styles: list[Path], n_pairs: int, rng: random.Random
) -> list[tuple[Path, Path]]:
    """n_pairs distinct (content, style) pairs, uniform over all len(contents)·len(styles)."""
    picks = rng.sample(range(len(contents) * len(styles)), n_pairs)
    return [(contents[pick // len(styles)], styles[pick % len(styles)]) for pick in picks]


def _one_to_one_pairs(
    contents: list[Path], styles: list[Path], n_pairs: int, rng: random.Random
) -> list[tuple[Path, Path]]:
    """Pair i = (content i, style i) of the two seeded shuffles: n_pairs pairs of n_pairs distinct
    contents and n_pairs distinct styles (NST-Project dataloader.py pairs content_files[index]
    with style_files[index])."""
    return list(zip(rng.sample(contents, n_pairs), rng.sample(styles, n_pairs)))


def _cache_path(folder: Path, job: _CacheJob) -> Path:
    # The digest keeps same-named files apart (two WikiArt styles, content vs style folders).
    digest = hashlib.sha1(job.source.as_posix().encode()).hexdigest()[:8]
    return folder / job.role / f"{job.source.stem}-{digest}.png"


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
