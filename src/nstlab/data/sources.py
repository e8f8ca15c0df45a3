"""Where images come from: the packaged demo set, MS-COCO 2014 train (content), WikiArt (style).

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
"""

import csv
import json
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from nstlab.data.download import DownloadSummary, RemoteFile, download_all
from nstlab.errors import ConfigError, DownloadError

COCO_BASE_URL = "http://images.cocodataset.org"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SOURCES_BY_ROLE = {"content": ("demo", "coco"), "style": ("demo", "wikiart")}


def list_images(directory: Path) -> list[Path]:
    """Image files under `directory` (recursively), sorted; manifests, locks and `.part` files excluded."""
    return sorted(path for path in Path(directory).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def source_group(source: str) -> Callable[[Path], str]:
    """How to group a source's images for splitting: the demo's crops share the prefix before
    the first `_` (one photo, see demo/README.md); COCO and WikiArt files stand alone."""
    if source == "demo":
        return lambda path: path.name.split("_", 1)[0]
    return Path.as_posix


def demo_images(role: str) -> list[Path]:
    """The images shipped inside the package for `role` ("content" or "style"), sorted."""
    return list_images(Path(str(resources.files("nstlab.data") / "demo" / role)))


def choose_files(names: list[str], n_images: int, seed: int, salt: str) -> list[str]:
    """A seeded sample of min(n_images, len(names)) names, sorted; a function of (names, n, seed, salt) only.

    `salt` (the source and role) keeps the content and style draws independent for one seed.
    """
    population = sorted(set(names))
    sample = random.Random(f"{salt}:{seed}").sample(population, min(n_images, len(population)))
    return sorted(sample)


def _coco_file_names(index_file: Path) -> list[str]:
    member = "annotations/captions_train2014.json"
    try:
        with zipfile.ZipFile(index_file) as bundle, bundle.open(member) as handle:
            return [image["file_name"] for image in json.load(handle)["images"]]
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
        raise DownloadError(f"{index_file}: not the COCO 2014 annotations archive with {member} ({error}); "
                            "delete it and run again, or fix the mirror") from None


def _wikiart_file_names(index_file: Path) -> list[str]:
    with open(index_file, newline="", encoding="utf-8") as handle:
        # ArtGAN's CSV has no header; the suffix test also drops one if a mirror adds it.
        return [row[0] for row in csv.reader(handle) if row and Path(row[0]).suffix.lower() in IMAGE_SUFFIXES]


@dataclass(frozen=True)
class _RemoteSource:
    role: str
    index_path: str  # under the source's base URL
    image_dir: str  # under the source's base URL
    read_index: Callable[[Path], list[str]]


_REMOTE_SOURCES = {
    "coco": _RemoteSource("content", "annotations/annotations_trainval2014.zip", "train2014", _coco_file_names),
    "wikiart": _RemoteSource("style", "wikiart_csv/style_train.csv", "wikiart", _wikiart_file_names),
}


def fetch_source(name: str, role: str, n_images: int, raw_dir: Path | str, *, seed: int, mirror: str | None = None,
                 base_url: str | None = None, workers: int = 8, retries: int = 4, backoff_s: float = 1.0,
                 timeout_s: float = 30.0, progress: bool = True) -> tuple[list[Path], DownloadSummary]:
    """Put min(n_images, available) images of source `name` into `raw_dir/role/`.

    Returns the paths that are present (failed downloads are in the summary, which the caller
    reports). Image files in `raw_dir/role/` that were not chosen are removed, so the folder
    holds exactly this draw. `base_url` replaces the source's default host; `mirror` wins over both.
    """
    if name not in SOURCES_BY_ROLE.get(role, ()):
        raise ConfigError(f"data.{role}_source={name}: not a {role} source; use one of {', '.join(SOURCES_BY_ROLE[role])}")
    target_dir = Path(raw_dir) / role
    if name == "demo":
        return _copy_demo(role, n_images, target_dir, seed)
    source = _REMOTE_SOURCES[name]
    base = _base_url(name, mirror, base_url)
    options = dict(workers=workers, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s, progress=progress)
    index_file = _fetch_index(f"{base}/{source.index_path}", Path(raw_dir) / "index" / name, options)
    chosen = choose_files(source.read_index(index_file), n_images, seed, f"{name}-{role}")
    summary = download_all([RemoteFile(f"{base}/{source.image_dir}/{quote(file_name)}", file_name) for file_name in chosen],
                           target_dir, **options)
    paths = [target_dir / file_name for file_name in chosen if file_name not in summary.failed]
    _remove_unchosen(target_dir, paths)
    return paths, summary


def _base_url(name: str, mirror: str | None, base_url: str | None) -> str:
    if mirror:
        return f"{mirror.rstrip('/')}/{name}"
    if base_url:
        return base_url.rstrip("/")
    if name == "coco":
        return COCO_BASE_URL
    raise ConfigError("data.style_source=wikiart needs a base URL: set data.mirror to a mirror serving "
                      "wikiart/wikiart_csv/style_train.csv and wikiart/wikiart/<Style>/<file>.jpg "
                      "(WikiArt has no public per-file host)")


def _fetch_index(url: str, index_dir: Path, options: dict) -> Path:
    file_name = url.rsplit("/", 1)[-1]
    summary = download_all([RemoteFile(url, file_name)], index_dir, **options)
    if not summary.ok:
        raise DownloadError(summary.failed[file_name])
    return index_dir / file_name


def _copy_demo(role: str, n_images: int, target_dir: Path, seed: int) -> tuple[list[Path], DownloadSummary]:
    packaged = {path.name: path for path in demo_images(role)}
    if not packaged:
        raise ConfigError(f"data.{role}_source=demo: the package holds no demo {role} images "
                          f"(nstlab/data/demo/{role}/); reinstall nstlab")
    chosen = choose_files(list(packaged), n_images, seed, f"demo-{role}")
    target_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(shutil.copyfile(packaged[file_name], target_dir / file_name)) for file_name in chosen]
    _remove_unchosen(target_dir, paths)
    return paths, DownloadSummary(downloaded=tuple(chosen))


def _remove_unchosen(target_dir: Path, keep: list[Path]) -> None:
    keep_set = set(keep)
    for path in list_images(target_dir):
        if path not in keep_set:
            path.unlink()
