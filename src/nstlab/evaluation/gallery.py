"""The gallery check: what a viewer asks of one stylised image. Is the content still there, is it
more than a flat colour, has it moved toward the style? Measured in pixels only, so it does not
move with the backbones the models were trained with.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from nstlab.errors import NstlabError
from nstlab.functional import luminance, ssim

TEXTURE_PATCH = 5  # local texture: mean-removed 5×5 luminance patches
TEXTURE_SCALES = (1, 2)  # at full and half resolution


def pixel_style_features(images: torch.Tensor) -> list[torch.Tensor]:
    """What a style looks like without any network: its colours (the RGB channels) and its local
    texture (each pixel's mean-removed 5×5 luminance patch, at full and half resolution).
    (B, 3, H, W) in [0, 1] -> feature maps (B, C, N)."""
    grey = luminance(images)
    maps = [images.flatten(2)]
    for scale in TEXTURE_SCALES:
        patches = F.unfold(F.avg_pool2d(grey, scale) if scale > 1 else grey, TEXTURE_PATCH)
        maps.append(patches - patches.mean(dim=1, keepdim=True))
    return maps


def pixel_gram_distance(first: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Σ over pixel_style_features of ‖G(first) − G(style)‖ / ‖G(style)‖, G = F·Fᵀ/N: how far
    `first`'s colours and local texture are from the style's, any two image sizes. Returns (B,)."""
    total = 0.0
    for first_map, style_map in zip(pixel_style_features(first), pixel_style_features(style)):
        first_gram = first_map @ first_map.transpose(1, 2) / first_map.shape[-1]
        style_gram = style_map @ style_map.transpose(1, 2) / style_map.shape[-1]
        distance = torch.linalg.matrix_norm(first_gram - style_gram)
        total = total + distance / torch.linalg.matrix_norm(style_gram)
    return total


@torch.no_grad()
def gallery_scores(output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, float]:
    """One stylised image (1, 3, H, W) against its content (same size) and style, in [0, 1]:
    ssim_content (greyscale), luminance_std (a flat colour has about 0) and style_gram_ratio,
    the output's pixel_gram_distance to the style over the content's own (below 1: it moved
    toward the style's colours and texture)."""
    return {
        "ssim_content": float(ssim(luminance(output), luminance(content)).mean()),
        "luminance_std": float(luminance(output).std()),
        "style_gram_ratio": float(pixel_gram_distance(output, style) / pixel_gram_distance(content, style)),
    }


def gallery_scores_of_outputs(outputs_dir: Path, pairs: int) -> list[dict[str, float]]:
    """gallery_scores of the first `pairs` outputs an evaluation wrote (outputs_dir/0000.png …,
    their content and style named in outputs_dir/pairs.json), each image resized as the
    evaluation resized it (longer side at most the output's)."""
    from nstlab.data.images import load_rgb, resize_max_side, to_tensor

    def image(path: Path, max_side: int) -> torch.Tensor:
        return to_tensor(resize_max_side(load_rgb(path), max_side)).unsqueeze(0)

    scores = []
    for row in json.loads((outputs_dir / "pairs.json").read_text())[:pairs]:
        output_path = outputs_dir / f"{row['pair']:04d}.png"
        output = to_tensor(load_rgb(output_path)).unsqueeze(0)
        longer_side = max(output.shape[-2:])
        content = image(Path(row["content"]), longer_side)
        if content.shape != output.shape:
            raise NstlabError(
                f"{output_path}: {tuple(output.shape[-2:])} px, its content {row['content']} "
                f"{tuple(content.shape[-2:])} px; rerun the evaluation"
            )
        scores.append(gallery_scores(output, content, image(Path(row["style"]), longer_side)))
    return scores
