"""The one safe image loader, and the few conversions around it.

Every image the project reads from outside goes through `load_rgb`, so a corrupt download, a
decompression bomb or an odd pixel mode is a one-line `ImageError` naming the file instead of
a crash (or a silent wrong picture) somewhere deep in training.
"""

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nstlab.errors import ImageError

# What Pillow raises on a damaged file once decoding starts: truncated data (OSError), broken
# headers (SyntaxError, struct.error), bad values (ValueError), zlib streams, early EOF.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_WHITE = (255, 255, 255, 255)
# The formats photos and paintings arrive in (JPEG covers MPO). Pillow opens many more, and some
# hand the file to an outside program (EPS runs Ghostscript): a download must never reach one.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def _reject(path: Path, reason: str, advice: str) -> ImageError:
    one_line_reason = " ".join(reason.split())
    return ImageError(f"{path}: {one_line_reason}; {advice}")


def load_rgb(path: Path | str, *, max_pixels: int = 64_000_000, min_side: int = 16) -> Image.Image:
    """Decode `path` fully into an RGB image, EXIF orientation applied.

    The size is checked from the header before any pixel is decoded (decompression bombs cost
    no memory), and the whole file is then decoded so truncation is caught here, not later.
    Pillow's DecompressionBombWarning is left alone: the max_pixels check right after the
    header is stricter by default, and turning the warning into an error would need
    `warnings.catch_warnings`, which is process-global and unsafe in the pair stage's threads.
    Only ALLOWED_FORMATS are opened, whatever the file name says.
    Modes: alpha (RGBA, LA, PA, palette transparency) is composited on white; 16-bit gray
    (I;16*, I) is scaled 65535 → 255; F follows Pillow's 0–255 convention; CMYK, L, 1 and P
    are converted by Pillow.
    """
    path = Path(path)
    if not path.is_file():
        raise _reject(path, "file not found", "check the path or run the download stage again")
    if path.stat().st_size == 0:
        raise _reject(path, "empty file (0 bytes)", "delete it and download it again")
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as image:
            _check_size(path, image.size, max_pixels, min_side)
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:  # over 2× Pillow's own limit: refused inside open()
        raise _reject(
            path,
            f"too many pixels for Pillow's decompression-bomb guard ({error})",
            "downscale the image or remove it",
        ) from None
    except UnidentifiedImageError:
        raise _reject(
            path,
            "not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)",
            "remove it or convert it to PNG/JPEG",
        ) from None
    except _DECODE_ERRORS as error:
        raise _reject(
            path, f"corrupt or truncated image ({error})", "delete it and download it again"
        ) from None


def _check_size(path: Path, size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise _reject(
            path,
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
            "(decompression-bomb guard)",
            "downscale the image or raise data.max_pixels",
        )
    if min(width, height) < min_side:
        raise _reject(
            path,
            f"{width}x{height} px is smaller than min_side={min_side} px",
            "use a larger image or lower data.min_side",
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit gray: scale, because convert("L") would clip at 255
        gray16 = np.asarray(image, dtype=np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(gray16 / 257).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image → float tensor (3, H, W) in [0, 1]."""
    pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)


def resize_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is at most `max_side`, keeping the aspect ratio; never upscales."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return image
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)


RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_exact(image: Image.Image, size: int, kernel: str = "bilinear") -> Image.Image:
    """Resize to size×size, aspect not kept (the paper trains on squashed squares), with one of
    RESAMPLING's kernels; bilinear is torchvision's Resize((size, size)) on a PIL image.

    Pillow widens every kernel when shrinking, so this is antialiased.
    """
    return image.resize((size, size), RESAMPLING[kernel])


def save_image(image: torch.Tensor | Image.Image, path: Path | str) -> Path:
    """Write a PIL image or a (3, H, W) tensor in [0, 1] as PNG or JPEG (by suffix).

    Written to a temp file then renamed, so a reader never sees half an image.
    """
    path = Path(path)
    if isinstance(image, torch.Tensor):
        pixels = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        image = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), mode="RGB")
    image_format = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    if image_format is None:
        raise ImageError(f"{path}: cannot save as {path.suffix or 'no suffix'}; use .png, .jpg or .jpeg")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            image.convert("RGB").save(
                handle, format=image_format, **({"quality": 95} if image_format == "JPEG" else {})
            )
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
    return path
