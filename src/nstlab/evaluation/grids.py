"""Image grids (rows of content | style | outputs) for sample logging, the report and the README."""

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

CELL_PX = 160
HEADER_PX = 22


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Letterbox into a size×size cell, aspect kept."""
    image = image.copy()
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (size, size), "white")
    cell.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return cell


def save_grid(
    rows: Sequence[Sequence[torch.Tensor | Image.Image]],
    path: Path,
    header: Sequence[str] | None = None,
    cell_px: int = CELL_PX,
) -> Path:
    """Write a grid PNG: one row per pair, one column per image kind, optional column titles."""
    columns = max(len(row) for row in rows)
    top = HEADER_PX if header else 0
    canvas = Image.new("RGB", (columns * cell_px, top + len(rows) * cell_px), "white")
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(header or []):
        draw.text((column * cell_px + 4, 4), str(title), fill="black")
    for row_index, row in enumerate(rows):
        for column, item in enumerate(row):
            image = tensor_to_image(item) if isinstance(item, torch.Tensor) else item
            canvas.paste(_fit(image, cell_px), (column * cell_px, top + row_index * cell_px))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
