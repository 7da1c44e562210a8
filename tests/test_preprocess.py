"""Image preprocessing: every accepted mode and format decodes to RGB on white, bad input names the field,
the white border is cropped, and the tensor has the tower's shape and normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from shopclip.errors import InvalidInput
from shopclip.input_policy import ProductLimits
from shopclip.model import preprocess
from shopclip.model.preprocess import ImageTransform, content_box, crop_to_content, decode_image, prepare_image


def product_on_white(size: int = 200, box: tuple[int, int, int, int] = (60, 80, 120, 150),
                     colour: tuple[int, int, int] = (200, 30, 40)) -> Image.Image:
    """A white catalogue-style image with one coloured product rectangle."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(colour, box)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_rgb_formats_decode_to_the_same_picture(fmt: str) -> None:
    original = product_on_white()
    decoded = decode_image(encode(original, fmt, quality=95) if fmt != "PNG" else encode(original, fmt))
    assert decoded.mode == "RGB" and decoded.size == original.size
    error = np.abs(np.asarray(decoded, dtype=int) - np.asarray(original, dtype=int)).mean()
    assert error < 3.0


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = product_on_white().convert("CMYK")
    decoded = decode_image(encode(cmyk, "JPEG", quality=95))
    assert decoded.mode == "RGB"
    assert np.asarray(decoded)[100, 90].tolist() == pytest.approx([200, 30, 40], abs=12)
    assert np.asarray(decoded)[5, 5].min() > 245


@pytest.mark.parametrize("mode", ["L", "1", "I;16"])
def test_grayscale_modes_become_gray_rgb(mode: str) -> None:
    gray = product_on_white(colour=(60, 60, 60)).convert("L")
    if mode == "I;16":
        gray = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # full 16-bit range
    else:
        gray = gray.convert(mode)
    decoded = decode_image(encode(gray, "PNG"))
    pixels = np.asarray(decoded, dtype=int)
    assert decoded.mode == "RGB"
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels[5, 5, 0] == 255 and pixels[100, 90, 0] < 128


def test_grayscale_jpeg() -> None:
    decoded = decode_image(encode(product_on_white().convert("L"), "JPEG"))
    assert decoded.mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_transparency_is_composited_on_white(fmt: str) -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # transparent *black*
    rgba.paste((10, 200, 10, 255), (40, 40, 60, 60))
    pixels = np.asarray(decode_image(encode(rgba, fmt, lossless=True) if fmt == "WEBP" else encode(rgba, fmt)))
    assert pixels[5, 5].tolist() == [255, 255, 255]
    assert pixels[50, 50].tolist() == pytest.approx([10, 200, 10], abs=2)


def test_gray_with_alpha_is_composited_on_white() -> None:
    la = Image.new("LA", (50, 50), (0, 0))
    la.paste((30, 255), (20, 20, 30, 30))
    pixels = np.asarray(decode_image(encode(la, "PNG")))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[25, 25].tolist() == [30, 30, 30]


def test_palette_with_transparent_index_is_composited_on_white() -> None:
    palette = product_on_white(colour=(0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    white_index = palette.getpixel((0, 0))
    data = encode(palette, "PNG", transparency=white_index)
    pixels = np.asarray(decode_image(data))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[100, 90].tolist() == pytest.approx([0, 0, 255], abs=2)


def test_plain_palette_image() -> None:
    palette = product_on_white().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pixels = np.asarray(decode_image(encode(palette, "PNG")))
    assert pixels[100, 90].tolist() == pytest.approx([200, 30, 40], abs=6)


def test_exif_orientation_is_applied() -> None:
    tall = Image.new("RGB", (40, 80), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    decoded = decode_image(encode(tall, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (80, 40)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"definitely not an image", "not a decodable image"),
    (encode(Image.new("RGB", (10, 10)), "BMP"), "not a decodable image"),  # format outside the allow-list
    (encode(product_on_white(), "PNG")[:120], "corrupt"),
])
def test_bad_bytes_raise_invalid_input_naming_the_field(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, field="products[3].image")
    assert caught.value.field == "products[3].image"
    assert reason in caught.value.message


def test_the_byte_limit_is_the_callers_not_a_fixed_cap() -> None:
    """Preprocessing decodes under the limits the server or ingest runs with (it used to cap at 20 MiB
    whatever --max-image-bytes said)."""
    data = encode(product_on_white(), "PNG")
    with pytest.raises(InvalidInput, match=f"{len(data)} bytes, at most {len(data) - 1} accepted"):
        decode_image(data, limits=ProductLimits(max_image_bytes=len(data) - 1))
    assert decode_image(data, limits=ProductLimits(max_image_bytes=len(data))).size == product_on_white().size
    tight = ProductLimits(max_image_pixels=10)
    with pytest.raises(InvalidInput, match="pixels"):
        ImageTransform(image_size=32)(data, limits=tight)


def test_decompression_bomb_is_refused() -> None:
    # 1 bit per pixel, compresses to a few KB, but the header announces 64 million pixels.
    bomb = encode(Image.new("1", (8000, 8000), 1), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="pixels") as caught:
        decode_image(bomb)
    assert caught.value.field == "image"


def test_not_bytes_is_refused() -> None:
    with pytest.raises(InvalidInput, match="bytes"):
        decode_image("image.jpg")  # type: ignore[arg-type]


def test_crop_finds_the_product_inside_wide_white_borders() -> None:
    image = product_on_white(size=500, box=(150, 200, 300, 260))
    left, top, right, bottom = content_box(image)
    margin = round(preprocess.CROP_MARGIN * 500)
    assert (left, top, right, bottom) == (150 - margin, 200 - margin, 300 + margin, 260 + margin)


def test_crop_survives_jpeg_noise_and_isolated_specks() -> None:
    image = product_on_white(size=500, box=(150, 200, 300, 260))
    image.putpixel((5, 5), (0, 0, 0))  # a lone dust speck in the corner
    decoded = decode_image(encode(image, "JPEG", quality=75))
    left, top, right, bottom = content_box(decoded)
    assert 130 <= left <= 150 and 180 <= top <= 200 and 300 <= right <= 320 and 260 <= bottom <= 280


def test_blank_image_is_kept_whole() -> None:
    blank = Image.new("RGB", (64, 48), (255, 255, 255))
    assert content_box(blank) is None
    assert crop_to_content(blank).size == (64, 48)


def test_content_touching_the_edges_is_not_cropped() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 200, (60, 80, 3), dtype=np.uint8))
    assert crop_to_content(photo).size == (80, 60)


def test_prepare_image_accepts_pil_images() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    rgba.paste((10, 10, 10, 255), (40, 40, 60, 60))
    prepared = prepare_image(rgba)
    assert prepared.mode == "RGB" and prepared.size[0] < 40


def test_transform_gives_normalised_square_tensor_of_the_product() -> None:
    transform = ImageTransform(image_size=64)
    wide = Image.new("RGB", (300, 100), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 300, 100 - 60))  # black band on top, white below: content box is the band
    tensor = transform(encode(wide, "PNG"))
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    white = (torch.ones(3) - torch.tensor(preprocess.IMAGENET_MEAN)) / torch.tensor(preprocess.IMAGENET_STD)
    black = -torch.tensor(preprocess.IMAGENET_MEAN) / torch.tensor(preprocess.IMAGENET_STD)
    assert torch.allclose(tensor[:, 0, 0], white, atol=0.05)  # padding above the band is white
    assert torch.allclose(tensor[:, 32, 32], black, atol=0.05)  # centre is the black band


def test_train_augmentation_is_random_and_keeps_the_shape() -> None:
    transform = ImageTransform(image_size=48)
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 90, 3), dtype=np.uint8)), "PNG")
    torch.manual_seed(0)
    first, second = transform(data, train=True), transform(data, train=True)
    assert first.shape == second.shape == (3, 48, 48)
    assert not torch.equal(first, second)
    assert torch.equal(transform(data), transform(data))  # evaluation is deterministic
