"""The safe loader: every rejection is a one-line ImageError naming the file; every mode ends as RGB."""

import struct
import time
import zlib

import pytest
import torch
from PIL import Image

from conftest_data import noise_image, write_image
from nstlab.data.images import load_rgb, resize_exact, resize_max_side, save_image, to_tensor
from nstlab.errors import ImageError


def rejection(path, **limits) -> str:
    with pytest.raises(ImageError) as caught:
        load_rgb(path, **limits)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def png_header_only(path, width: int, height: int):
    """A valid PNG signature and IHDR claiming width×height, with no pixel data: tiny on disk."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# -- rejections ------------------------------------------------------------------------------


def test_missing_file_is_rejected(tmp_path):
    assert "not found" in rejection(tmp_path / "absent.jpg")


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "empty file" in rejection(path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 10)
    assert "not an image" in rejection(path)


def test_truncated_jpeg_is_rejected(tmp_path):
    path = tmp_path / "cut.jpg"
    noise_image((64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in rejection(path)


def test_header_claiming_30000_squared_is_rejected_without_decoding(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 100
    started = time.perf_counter()
    message = rejection(path)
    assert time.perf_counter() - started < 1.0
    assert "decompression-bomb" in message


@pytest.mark.filterwarnings(
    "ignore::PIL.Image.DecompressionBombWarning"
)  # 10000² is in Pillow's warning band
@pytest.mark.parametrize("side", [9000, 10000])
def test_max_pixels_is_checked_from_the_header_before_decoding(tmp_path, side):
    # With no pixel data in the file, a decode would have said "truncated" instead.
    message = rejection(png_header_only(tmp_path / "big.png", side, side))
    assert f"{side * side} pixels exceeds max_pixels=64000000" in message


def test_max_pixels_is_configurable(tmp_path):
    assert "max_pixels=1000" in rejection(write_image(tmp_path / "a.png", (40, 40)), max_pixels=1000)


@pytest.mark.parametrize("size", [(7, 9), (2, 300), (300, 2)])
def test_images_below_min_side_are_rejected(tmp_path, size):
    path = write_image(tmp_path / "small.png", size)
    assert f"{size[0]}x{size[1]} px is smaller than min_side=16" in rejection(path)


# -- accepted modes --------------------------------------------------------------------------


def test_odd_sizes_are_kept(tmp_path):
    image = load_rgb(write_image(tmp_path / "odd.png", (33, 17)))
    assert (image.mode, image.size) == ("RGB", (33, 17))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    red, green, blue = load_rgb(path).getpixel((16, 16))
    assert red > 230 and green < 30 and blue < 30


def test_16_bit_gray_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    image = Image.new("I;16", (32, 32), 128 * 257)
    image.putpixel((0, 0), 65535)
    image.save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_rgb(path)
    assert loaded.getpixel((5, 5)) == (128, 128, 128)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)


def test_float_image_follows_pillows_0_to_255_convention(tmp_path):
    path = tmp_path / "float.tif"
    Image.new("F", (32, 32), 100.0).save(path)
    assert load_rgb(path).getpixel((3, 3)) == (100, 100, 100)


def test_palette_gif_becomes_rgb(tmp_path):
    path = tmp_path / "palette.gif"
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(path)
    assert load_rgb(path).getpixel((4, 4)) == (10, 200, 30)


def test_palette_png_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(path, transparency=0)
    loaded = load_rgb(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((5, 5)) == (200, 0, 0)


@pytest.mark.parametrize(
    "mode, opaque, transparent", [("RGBA", (0, 0, 255, 255), (0, 0, 255, 0)), ("LA", (40, 255), (40, 0))]
)
def test_alpha_is_composited_on_white(tmp_path, mode, opaque, transparent):
    path = tmp_path / f"{mode}.png"
    image = Image.new(mode, (32, 32), opaque)
    image.putpixel((0, 0), transparent)
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((5, 5)) == ((0, 0, 255) if mode == "RGBA" else (40, 40, 40))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    raw = Image.new("RGB", (40, 20), (0, 0, 255))
    raw.paste((255, 0, 0), (0, 0, 40, 10))  # stored: top half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    raw.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_rgb(path)
    assert loaded.size == (20, 40)
    assert loaded.getpixel((15, 20))[0] > 200  # the stored top is now on the right
    assert loaded.getpixel((4, 20))[2] > 200


def test_webp_is_read(tmp_path):
    path = tmp_path / "image.webp"
    Image.new("RGB", (32, 24), (20, 120, 220)).save(path, lossless=True)
    loaded = load_rgb(path)
    assert loaded.size == (32, 24) and loaded.getpixel((3, 3)) == (20, 120, 220)


# -- conversions -----------------------------------------------------------------------------


def test_to_tensor_is_chw_float_in_unit_range():
    tensor = to_tensor(Image.new("RGB", (5, 3), (255, 0, 51)))
    assert tensor.shape == (3, 3, 5) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_resize_max_side_keeps_aspect_and_never_upscales():
    assert resize_max_side(Image.new("RGB", (1000, 500)), 512).size == (512, 256)
    assert resize_max_side(Image.new("RGB", (300, 600)), 512).size == (256, 512)
    assert resize_max_side(Image.new("RGB", (100, 50)), 512).size == (100, 50)


def test_resize_exact_squashes_to_a_square():
    assert resize_exact(Image.new("RGB", (300, 100)), 64).size == (64, 64)


def test_save_image_round_trips_a_tensor_and_leaves_no_temp_file(tmp_path):
    tensor = torch.rand(3, 12, 20)
    path = save_image(tensor, tmp_path / "out" / "image.png")
    assert [entry.name for entry in path.parent.iterdir()] == ["image.png"]
    assert torch.allclose(to_tensor(Image.open(path)), tensor, atol=1 / 255)


def test_save_image_writes_jpeg_by_suffix(tmp_path):
    path = save_image(Image.new("RGB", (16, 16), (9, 9, 9)), tmp_path / "image.jpg")
    assert Image.open(path).format == "JPEG"


def test_save_image_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(ImageError, match=r"\.bmp"):
        save_image(Image.new("RGB", (16, 16)), tmp_path / "image.bmp")
