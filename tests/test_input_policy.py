"""The one input policy: every entrance (server, ingest, preprocessing) applies the same limits and rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopclip.errors import InvalidInput
from shopclip.input_policy import (DEFAULT_LIMITS, ProductLimits, check_image_file, check_product, check_text,
                                   has_content, open_image)
from shopclip.products import ProductInput
from shopclip.server.config import ServerConfig
from support.images import jpeg_bytes


def test_the_server_defaults_are_the_policy_defaults() -> None:
    assert ServerConfig(bundle="fake").limits == DEFAULT_LIMITS


@pytest.mark.parametrize("product, field", [
    (ProductInput(designation="  ", description="\n"), "products[2].designation"),
    (ProductInput(designation="x" * 11), "products[2].designation"),
    (ProductInput(designation="ok", description="y" * 21), "products[2].description"),
    (ProductInput(image=b""), "products[2].image"),
    (ProductInput(image=b"GIF89a" + b"\0" * 40), "products[2].image"),
    (ProductInput(image=jpeg_bytes((40, 40))), "products[2].image"),  # 1600 pixels > 1000
])
def test_each_rule_names_the_field(product: ProductInput, field: str) -> None:
    limits = ProductLimits(max_designation_chars=10, max_description_chars=20, max_image_pixels=1000)
    with pytest.raises(InvalidInput) as caught:
        check_product(product, limits, "products[2]")
    assert caught.value.field == field


def test_a_product_within_the_limits_passes() -> None:
    check_product(ProductInput(designation="Lampe", image=jpeg_bytes()), DEFAULT_LIMITS, "product")
    check_product(ProductInput(image=jpeg_bytes()), DEFAULT_LIMITS, "product")


def test_catalogue_rows_are_named_by_bare_columns() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_text("", "", has_image=False, field="")
    assert caught.value.field == "designation"
    assert not has_content(" ", "\t", False) and has_content("", "", True)


@pytest.mark.parametrize("name", ["max_designation_chars", "max_description_chars", "max_image_bytes",
                                  "max_image_pixels"])
def test_a_limit_below_one_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        ProductLimits(**{name: 0})
    assert caught.value.field == name


def test_a_truncated_image_passes_the_header_check_and_fails_the_decode(tmp_path: Path) -> None:
    data = jpeg_bytes((256, 256), noise=True)  # mostly pixel data: half the file is half the pixels
    truncated = data[:len(data) // 2]
    path = tmp_path / "image.jpg"
    path.write_bytes(truncated)
    check_image_file(path, decode=False)  # ingest --no-image-check: header, size and presence only
    with pytest.raises(InvalidInput, match="corrupt"):
        check_image_file(path)
    with pytest.raises(InvalidInput, match="corrupt"):
        open_image(truncated)


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "image.jpg"
    path.write_bytes(jpeg_bytes())
    with pytest.raises(InvalidInput, match="at most 10 accepted"):
        check_image_file(path, ProductLimits(max_image_bytes=10))
    with pytest.raises(InvalidInput, match="missing"):
        check_image_file(tmp_path / "absent.jpg")
