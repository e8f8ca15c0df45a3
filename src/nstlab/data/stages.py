"""The data stages: download (fetch or copy the images) and pair (split, pair, pre-resize).

Each reads its config block, writes its outs, prints a summary; `nstlab download`/`pair`
and pipeline/download.py, pipeline/pair.py call these.
"""

from pathlib import Path

from rich.console import Console

from nstlab.config import Config
from nstlab.errors import DownloadError

ROLES = ("content", "style")


def images_to_fetch(cfg: Config) -> int:
    """One image per pair and role: data.pairing one_to_one uses each image once."""
    return cfg.data.n_train + cfg.data.n_val + cfg.data.n_test


def download_stage(cfg: Config, raw_dir: Path, progress: bool = True) -> None:
    from nstlab.data.sources import fetch_source

    console = Console(stderr=True, soft_wrap=True)
    data = cfg.data
    failures = []
    for role, source in zip(ROLES, (data.content_source, data.style_source)):
        paths, summary = fetch_source(
            source,
            role,
            images_to_fetch(cfg),
            raw_dir,
            seed=data.split_seed,
            mirror=data.mirror,
            workers=data.download_workers,
            retries=data.download_retries,
            timeout_s=data.download_timeout_s,
            max_missing=data.max_missing,
            hub_shuffle_buffer=data.hub_shuffle_buffer,
            progress=progress,
        )
        replaced = (
            f"\n  the {len(summary.missing)} missing were replaced by the next images of the seeded draw"
            if summary.missing
            else ""
        )
        console.print(
            f"{role} ({source}): {len(paths)} images in {raw_dir / role}; {summary.describe()}{replaced}"
        )
        failures += [f"{name}: {reason}" for name, reason in summary.failed.items()]
    if failures:
        raise DownloadError(
            f"{len(failures)} downloads failed (first: {failures[0]}); rerun `nstlab download` "
            "to resume, or set data.mirror"
        )


def pair_stage(
    cfg: Config, raw_dir: Path, out_dir: Path, cache_dir: Path = Path("data/cache"), progress: bool = True
) -> None:
    from nstlab.data.pairs import build_pairs
    from nstlab.data.sources import list_images, source_group

    data = cfg.data
    summary = build_pairs(
        list_images(raw_dir / "content"),
        list_images(raw_dir / "style"),
        n_train=data.n_train,
        n_val=data.n_val,
        n_test=data.n_test,
        seed=data.split_seed,
        image_size=data.image_size,
        cache_dir=cache_dir,
        out_dir=out_dir,
        test_max_side=data.test_max_side,
        max_pixels=data.max_pixels,
        min_side=data.min_side,
        progress=progress,
        pairing=data.pairing,
        resample=data.resample,
        group_of={"content": source_group(data.content_source), "style": source_group(data.style_source)},
    )
    console = Console(stderr=True, soft_wrap=True)
    console.print(
        f"pairs: {summary.pairs}; images: {summary.images}; skipped {len(summary.skipped)} unusable images"
        + (f" (listed in {out_dir / 'skipped.csv'})" if summary.skipped else "")
    )
