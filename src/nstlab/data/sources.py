"""Where images come from: the packaged demo set, MS-COCO 2014 train (content), WikiArt (style),
a local folder (`dir:PATH`) or a Hugging Face dataset (`hf:ID`, see data/hub.py).

Every source ends in one layout that the pair stage reads: `raw_dir/content/*` and
`raw_dir/style/*` (WikiArt keeps its `Style/` sub-folders). Remote sources fetch only the N
images asked for, never the 13–25 GB archives: a small index is downloaded once (resumable,
cached under `raw_dir/index/<source>/`), N names are drawn from it by a seeded sample, and only
those are downloaded.

- coco: index = `{base}/annotations/annotations_trainval2014.zip`, member
  `annotations/captions_train2014.json` (`images[].file_name`); images at
  `{base}/train2014/COCO_train2014_<id:012d>.jpg`; base defaults to cocodataset.org.
- wikiart: ArtGAN layout, index `{base}/wikiart_csv/style_train.csv` (rows `Style/file.jpg,label`),
  images at `{base}/wikiart/<Style/file.jpg>`. WikiArt has no public per-file host, so the base
  URL must be given.
- `mirror` overrides both: `{mirror}/coco/...` and `{mirror}/wikiart/...`, same sub-layout.

Mirrors lose files: one the index lists but the server lacks (404/410), or whose bytes never
decode, is replaced by the next name of the same seeded draw order; the draw fails only when
more than `max_missing` of it is missing. An index that cannot be opened is fetched again.

`dir:PATH` draws N of the images under PATH (recursively, sub-folders kept) with the same
seeded draw and hard-links them into `raw_dir/role/` (a copy when PATH is on another
filesystem, where no hard link can reach).
"""

import csv
import json
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from nstlab.config import check_source_name
from nstlab.data.download import DownloadSummary, RemoteFile, download_all
from nstlab.data.images import load_rgb
from nstlab.errors import ConfigError, DownloadError

COCO_BASE_URL = "http://images.cocodataset.org"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def list_images(directory: Path) -> list[Path]:
    """Image files under `directory` (recursively), sorted; manifests, locks and `.part` files excluded."""
    return sorted(
        path
        for path in Path(directory).rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def source_group(source: str) -> Callable[[Path], str]:
    """How to group a source's images for splitting: the demo's crops share the prefix before
    the first `_` (one photo, see demo/README.md); COCO and WikiArt files stand alone."""
    if source == "demo":
        return lambda path: path.name.split("_", 1)[0]
    return Path.as_posix


def demo_images(role: str) -> list[Path]:
    """The images shipped inside the package for `role` ("content" or "style"), sorted."""
    return list_images(Path(str(resources.files("nstlab.data") / "demo" / role)))


def draw_order(names: list[str], seed: int, salt: str) -> list[str]:
    """Every name once, in a seeded order that is a function of (set of names, seed, salt) only.

    A draw of N is the first N; a file lost by the mirror is replaced by the next one. `salt`
    (the source and role) keeps the content and style draws independent for one seed.
    """
    order = sorted(set(names))
    random.Random(f"{salt}:{seed}").shuffle(order)
    return order


def choose_files(names: list[str], n_images: int, seed: int, salt: str) -> list[str]:
    """The first min(n_images, len(names)) names of the seeded draw order, sorted."""
    return sorted(draw_order(names, seed, salt)[:n_images])


def _coco_file_names(index_file: Path) -> list[str]:
    member = "annotations/captions_train2014.json"
    try:
        with zipfile.ZipFile(index_file) as bundle, bundle.open(member) as handle:
            return [image["file_name"] for image in json.load(handle)["images"]]
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
        raise DownloadError(
            f"{index_file}: not the COCO 2014 annotations archive with {member} ({error}); "
            "check the mirror (a damaged copy is fetched again automatically)"
        ) from None


def _wikiart_file_names(index_file: Path) -> list[str]:
    try:
        with open(index_file, newline="", encoding="utf-8") as handle:
            # ArtGAN's CSV has no header; the suffix test also drops one if a mirror adds it.
            names = [
                row[0] for row in csv.reader(handle) if row and Path(row[0]).suffix.lower() in IMAGE_SUFFIXES
            ]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DownloadError(f"{index_file}: not ArtGAN's style_train.csv ({error}); fix the mirror") from None
    if not names:
        raise DownloadError(f"{index_file}: no image rows (Style/file.jpg,label); fix the mirror")
    return names


@dataclass(frozen=True)
class _RemoteSource:
    role: str
    index_path: str  # under the source's base URL
    image_dir: str  # under the source's base URL
    read_index: Callable[[Path], list[str]]


_REMOTE_SOURCES = {
    "coco": _RemoteSource(
        "content", "annotations/annotations_trainval2014.zip", "train2014", _coco_file_names
    ),
    "wikiart": _RemoteSource("style", "wikiart_csv/style_train.csv", "wikiart", _wikiart_file_names),
}


def fetch_source(
    name: str,
    role: str,
    n_images: int,
    raw_dir: Path | str,
    *,
    seed: int,
    mirror: str | None = None,
    base_url: str | None = None,
    workers: int = 8,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
    max_missing: float = 0.02,
    hub_shuffle_buffer: int = 1000,
    progress: bool = True,
) -> tuple[list[Path], DownloadSummary]:
    """Put min(n_images, available) images of source `name` into `raw_dir/role/`.

    Returns the paths that are present (failed downloads and the files missing on the server
    are in the summary, which the caller reports). Image files in `raw_dir/role/` that were not
    chosen are removed, so the folder holds exactly this draw. `base_url` replaces the source's
    default host; `mirror` wins over both. More than `max_missing` (a fraction) of the draw
    missing raises DownloadError.
    """
    check_source_name(name, role)
    target_dir = Path(raw_dir) / role
    if name == "demo":
        return _copy_demo(role, n_images, target_dir, seed)
    if name.startswith("dir:"):
        return _link_folder(Path(name.removeprefix("dir:")).expanduser(), role, n_images, target_dir, seed)
    if name.startswith("hf:"):
        from nstlab.data.hub import fetch_hub

        paths, summary = fetch_hub(
            name.removeprefix("hf:"),
            role,
            n_images,
            target_dir,
            seed=seed,
            max_missing=max_missing,
            buffer_size=hub_shuffle_buffer,
            progress=progress,
        )
        _remove_unchosen(target_dir, paths)
        return paths, summary
    source = _REMOTE_SOURCES[name]
    base = _base_url(name, mirror, base_url)
    options = dict(
        workers=workers, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s, progress=progress
    )
    index_file = _fetch_index(
        f"{base}/{source.index_path}", Path(raw_dir) / "index" / name, source.read_index, options
    )
    order = draw_order(source.read_index(index_file), seed, f"{name}-{role}")

    def url_of(file_name: str) -> str:
        return f"{base}/{source.image_dir}/{quote(file_name)}"

    summary = _download_draw(
        order,
        min(n_images, len(order)),
        url_of,
        target_dir,
        f"data.{role}_source={name}",
        max_missing,
        options,
    )
    paths = [target_dir / file_name for file_name in sorted((*summary.downloaded, *summary.skipped))]
    _remove_unchosen(target_dir, paths)
    return paths, summary


def _download_draw(
    order: list[str],
    wanted: int,
    url_of: Callable[[str], str],
    target_dir: Path,
    source: str,
    max_missing: float,
    options: dict,
) -> DownloadSummary:
    """Download the first `wanted` names of `order`; each one the server lacks (or that never
    decodes) is replaced by the next name, until `wanted` are present or `order` runs out."""
    batch, cursor = order[:wanted], wanted
    downloaded, skipped, failed, missing, received = [], [], {}, {}, 0
    while batch:
        summary = download_all(
            [RemoteFile(url_of(file_name), file_name) for file_name in batch],
            target_dir,
            verify=_decodes,
            **options,
        )
        downloaded += summary.downloaded
        skipped += summary.skipped
        failed.update(summary.failed)
        missing.update(summary.missing)
        received += summary.bytes_received
        if len(missing) > max_missing * wanted:
            names = ", ".join(sorted(missing)[:3])
            more = ", ..." if len(missing) > 3 else ""
            raise DownloadError(
                f"{source}: {len(missing)} of the {wanted} images drawn are missing on the "
                f"server ({names}{more}), more than data.max_missing = {max_missing}; "
                "check the mirror, or raise data.max_missing to accept the losses"
            )
        batch = order[cursor : cursor + len(summary.missing)]
        cursor += len(batch)
    return DownloadSummary(
        tuple(sorted(downloaded)),
        tuple(sorted(skipped)),
        dict(sorted(failed.items())),
        received,
        dict(sorted(missing.items())),
    )


def _decodes(path: Path) -> None:
    """The download check for images: a full decode by the safe loader (sizes are the pair stage's call)."""
    load_rgb(path, min_side=1)


def _base_url(name: str, mirror: str | None, base_url: str | None) -> str:
    if mirror:
        return f"{mirror.rstrip('/')}/{name}"
    if base_url:
        return base_url.rstrip("/")
    if name == "coco":
        return COCO_BASE_URL
    raise ConfigError(
        "data.style_source=wikiart needs a base URL: set data.mirror to a mirror serving "
        "wikiart/wikiart_csv/style_train.csv and wikiart/wikiart/<Style>/<file>.jpg "
        "(WikiArt has no public per-file host)"
    )


def _fetch_index(url: str, index_dir: Path, read_index: Callable[[Path], list[str]], options: dict) -> Path:
    """The index file, fetched again (up to the retries) until `read_index` can open it."""
    file_name = url.rsplit("/", 1)[-1]
    summary = download_all([RemoteFile(url, file_name)], index_dir, verify=read_index, **options)
    if not summary.ok:
        raise DownloadError({**summary.failed, **summary.missing}[file_name])
    return index_dir / file_name


def _copy_demo(role: str, n_images: int, target_dir: Path, seed: int) -> tuple[list[Path], DownloadSummary]:
    packaged = {path.name: path for path in demo_images(role)}
    if not packaged:
        raise ConfigError(
            f"data.{role}_source=demo: the package holds no demo {role} images "
            f"(nstlab/data/demo/{role}/); reinstall nstlab"
        )
    chosen = choose_files(list(packaged), n_images, seed, f"demo-{role}")
    target_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(shutil.copyfile(packaged[file_name], target_dir / file_name)) for file_name in chosen]
    _remove_unchosen(target_dir, paths)
    return paths, DownloadSummary(downloaded=tuple(chosen))


def _link_folder(
    folder: Path, role: str, n_images: int, target_dir: Path, seed: int
) -> tuple[list[Path], DownloadSummary]:
    """A seeded draw of the images under `folder`, hard-linked (else copied) into `target_dir`."""
    key = f"data.{role}_source=dir:{folder}"
    if not folder.is_dir():
        raise ConfigError(f"{key}: no such folder; give a folder of images (searched recursively)")
    folder, target = folder.resolve(), target_dir.resolve()
    if folder == target or folder in target.parents or target in folder.parents:
        raise ConfigError(f"{key}: overlaps the output folder {target_dir}; keep your images outside it")
    available = {path.relative_to(folder).as_posix(): path for path in list_images(folder)}
    if not available:
        raise ConfigError(f"{key}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under it")
    chosen = choose_files(list(available), n_images, seed, f"dir-{role}")
    paths, copied = [], 0
    for file_name in chosen:
        destination = target_dir / file_name
        copied += _place(available[file_name], destination)
        paths.append(destination)
    _remove_unchosen(target_dir, paths)
    how = f"{len(chosen) - copied} hard-linked"
    how += f", {copied} copied (another filesystem)" if copied else ""
    return paths, DownloadSummary(skipped=tuple(chosen), note=f"{how} from {folder}")


def _place(source: Path, destination: Path) -> bool:
    """Hard-link `source` at `destination` (kept if it already is one), else copy it; True if copied."""
    if destination.is_file():
        if os.path.samefile(source, destination):
            return False
        here, there = source.stat(), destination.stat()
        if (here.st_size, here.st_mtime_ns) == (there.st_size, there.st_mtime_ns):
            return True  # the copy of an earlier run (copy2 keeps the time stamp)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
        return False
    except OSError:  # EXDEV (another filesystem) or a filesystem without hard links
        shutil.copy2(source, destination)
        return True


def _remove_unchosen(target_dir: Path, keep: list[Path]) -> None:
    keep_set = set(keep)
    for path in list_images(target_dir):
        if path not in keep_set:
            path.unlink()
