"""`hf:ID`: images from a Hugging Face dataset (e.g. `hf:huggan/wikiart`), for users without a mirror.

Needs the optional extra `pip install "nstlab[hub]"` (the `datasets` library). The dataset is
streamed, never downloaded whole: its rows are shuffled by a seeded buffer
(`IterableDataset.shuffle(seed, buffer_size)`: shard order, then a buffer of `buffer_size`
rows), and the first N rows whose image decodes are kept, so about N + buffer_size rows cross
the network. The image bytes are written as they came (no re-encoding), named by their
position in the shuffled stream (`000042.jpg`), each fully decoded by the safe loader before
it is renamed and entered in `manifest.json`. A rerun whose N images are all present and
verified opens no stream; an interrupted one streams again and writes only what is missing.
A row whose image does not decode counts as missing and the next row takes its place.
"""

import hashlib
import os
import zlib
from pathlib import Path

from filelock import FileLock
from PIL import Image
from rich.progress import track

from nstlab.data.download import (
    LOCK_NAME,
    DownloadSummary,
    read_manifest,
    write_manifest,
)
from nstlab.data.images import ALLOWED_FORMATS, load_rgb
from nstlab.errors import ConfigError, DownloadError, NstlabError

_SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def fetch_hub(
    dataset_id: str,
    role: str,
    n_images: int,
    target_dir: Path,
    *,
    seed: int,
    max_missing: float = 0.02,
    buffer_size: int = 1000,
    split: str = "train",
    progress: bool = True,
) -> tuple[list[Path], DownloadSummary]:
    """Put the first `n_images` decodable images of the seeded stream of `dataset_id` in `target_dir`.

    Returns their paths (the caller removes other images from `target_dir`) and a summary whose
    `missing` lists the rows that did not decode. A lock file serialises two runs on one folder.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target_dir / LOCK_NAME)):
        names, summary = _fetch_locked(
            dataset_id, role, n_images, target_dir, seed, max_missing, buffer_size, split, progress
        )
    return [target_dir / name for name in names], summary


def _fetch_locked(
    dataset_id: str,
    role: str,
    n_images: int,
    target_dir: Path,
    seed: int,
    max_missing: float,
    buffer_size: int,
    split: str,
    progress: bool,
) -> tuple[list[str], DownloadSummary]:
    key = f"data.{role}_source=hf:{dataset_id}"
    stream_seed = _stream_seed(seed, role)
    manifest = read_manifest(target_dir)
    origin = f"hf://{dataset_id}?split={split}&seed={stream_seed}&buffer={buffer_size}"
    kept = _kept_from_manifest(manifest, target_dir, origin, n_images)
    if kept is not None:  # every image of this draw is on disk and verified: no stream at all
        return kept, DownloadSummary(skipped=tuple(kept))
    rows = _open_stream(dataset_id, split, stream_seed, buffer_size, key)
    by_position = {
        record.get("position"): name
        for name, record in manifest.items()
        if record.get("url", "").startswith(origin + "#")
    }
    written, skipped, missing, received = [], [], {}, 0
    try:
        counted = track(rows, total=n_images, description=f"{role} (hf)", disable=not progress)
        for position, image in enumerate(counted):
            if len(written) + len(skipped) == n_images:
                break
            name = by_position.get(position)
            if name and _still_verified(target_dir / name, manifest[name]):
                skipped.append(name)
                continue
            data = image.get("bytes") if isinstance(image, dict) else None
            record = _store(data, position, target_dir, f"{origin}#{position}")
            if isinstance(record, str):
                missing[f"{position:06d}"] = f"{key}: row {position}: {record}"
                if len(missing) > max_missing * n_images:
                    raise DownloadError(
                        f"{key}: {len(missing)} of the {n_images} images drawn do not decode "
                        f"(first: row {min(missing)}), more than data.max_missing = "
                        f"{max_missing}; check the dataset, or raise data.max_missing"
                    )
                continue
            name, record = record
            manifest[name] = record
            received += record["size"]
            written.append(name)
    finally:
        write_manifest(target_dir, manifest)
        for part in target_dir.glob(".*.part"):  # a row interrupted between write and rename
            part.unlink()
    present = sorted((*written, *skipped))
    write_manifest(target_dir, {name: manifest[name] for name in present})
    return present, DownloadSummary(tuple(sorted(written)), tuple(sorted(skipped)), {}, received, missing)


def _stream_seed(seed: int, role: str) -> int:
    """One seed per (seed, role), so `hf:X` for both roles does not draw the same images twice."""
    return zlib.crc32(f"{role}:{seed}".encode())


def _open_stream(dataset_id: str, split: str, seed: int, buffer_size: int, key: str):
    """The shuffled stream of the dataset's image column, as raw {bytes, path} records."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f'{key} needs the Hugging Face `datasets` library: pip install "nstlab[hub]"'
        ) from None
    try:
        stream = datasets.load_dataset(dataset_id, split=split, streaming=True)
        column = _image_column(stream.features, key)
        stream = stream.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        shuffled = stream.shuffle(seed=seed, buffer_size=buffer_size)
    except NstlabError:
        raise
    except Exception as error:  # datasets raises many types (hub, network, file format)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DownloadError(
            f"{key}: cannot open the dataset ({first_line}); check the id and the network (or HF_HUB_OFFLINE)"
        ) from None
    return (row[column] for row in shuffled)


def _image_column(features, key: str) -> str:
    import datasets

    if features is None:  # some streamed datasets only know their columns once read
        return "image"
    columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not columns:
        raise ConfigError(f"{key}: the dataset has no image column (features: {', '.join(features or {})})")
    return "image" if "image" in columns else columns[0]


def _store(data: bytes | None, position: int, target_dir: Path, url: str) -> tuple[str, dict] | str:
    """Write one row's image bytes, verified by a full decode; (name, manifest record), or why not."""
    if not data:
        return "no image bytes in the row"
    part = target_dir / f".{position:06d}.part"
    part.write_bytes(data)
    try:
        load_rgb(part, min_side=1)
        with Image.open(part, formats=ALLOWED_FORMATS) as image:
            suffix = _SUFFIX_BY_FORMAT.get(image.format, ".img")
    except NstlabError as error:
        part.unlink()
        return str(error).removeprefix(f"{part}: ").split("; ")[0]
    name = f"{position:06d}{suffix}"
    os.replace(part, target_dir / name)
    return name, {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "url": url,
        "position": position,
        "verified": True,
    }


def _still_verified(path: Path, record: dict) -> bool:
    if not (record.get("verified") and path.is_file() and path.stat().st_size == record.get("size")):
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == record.get("sha256")


def _kept_from_manifest(manifest: dict, target_dir: Path, origin: str, n_images: int) -> list[str] | None:
    """The names of this draw when the first n_images verified rows are all on disk, else None."""
    ours = sorted(
        (record["position"], name)
        for name, record in manifest.items()
        if record.get("url", "").startswith(origin + "#") and "position" in record
    )
    if len(ours) < n_images:
        return None
    first = [name for _, name in ours[:n_images]]
    # Rows are taken in stream order, so the rows on record are always the first decodable ones
    # of this stream: their first n_images are this draw.
    if all(_still_verified(target_dir / name, manifest[name]) for name in first):
        return first
    return None
