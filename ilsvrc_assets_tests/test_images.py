"""Identifying images from their headers, and preparing them for records (no TensorFlow here)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ilsvrc_assets import images
from ilsvrc_assets.images import ImageError, ImageInfo
from ilsvrc_assets_tests.helpers import cmyk_jpeg, encode, gray_jpeg, noise, png, rgb_jpeg

WHERE = "ILSVRC2012_img_train.tar member n01440764_1.JPEG"


# --- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        (rgb_jpeg(), ImageInfo("JPEG", 40, 30, 3)),
        (gray_jpeg(33, 17), ImageInfo("JPEG", 33, 17, 1)),
        (cmyk_jpeg(), ImageInfo("JPEG", 40, 30, 4)),
        (rgb_jpeg(64, 48, progressive=True), ImageInfo("JPEG", 64, 48, 3)),
        (png(), ImageInfo("PNG", 40, 30, 3)),
        (png(5, 7, "RGBA"), ImageInfo("PNG", 5, 7, 4)),
        (png(5, 7, "L"), ImageInfo("PNG", 5, 7, 1)),
    ],
    ids=["rgb", "gray", "cmyk", "progressive", "png", "png-rgba", "png-gray"],
)
def test_probe_reads_the_header(data: bytes, expected: ImageInfo) -> None:
    assert images.probe(data, WHERE) == expected
    assert images.probe(memoryview(data), WHERE) == expected


def test_probe_progressive_uses_sof2() -> None:
    data = rgb_jpeg(64, 48, progressive=True)
    assert b"\xff\xc2" in data and b"\xff\xc0" not in data


def test_probe_skips_app_segments_before_the_frame_header() -> None:
    exif = Image.Exif()
    exif[0x010E] = "a description"  # ImageDescription
    exif[0x0112] = 6  # orientation: the stored size is still what the header says
    data = encode(noise(50, 20), "JPEG", exif=exif.tobytes(), icc_profile=b"\x00" * 70000, comment=b"hello")
    assert data.index(b"Exif") < data.index(b"\xff\xc0")
    assert images.probe(data, WHERE) == ImageInfo("JPEG", 50, 20, 3)


def test_probe_is_not_fooled_by_marker_bytes_inside_segments() -> None:
    # An APP1 payload holding what looks like a frame header of a 1x1 one-component image, then
    # DHT (C4), JPG (C8) and DAC (CC) segments, which share the SOF range but are not frames.
    fake_sof = b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00"
    app1 = b"\xff\xe1" + (2 + len(fake_sof)).to_bytes(2, "big") + fake_sof
    others = b"".join(bytes([0xFF, m, 0x00, 0x04, 0xFF, 0xC0]) for m in (0xC4, 0xC8, 0xCC))
    real = rgb_jpeg(41, 29)
    data = real[:2] + app1 + others + real[2:]
    assert images.probe(data, WHERE) == ImageInfo("JPEG", 41, 29, 3)


def test_probe_handles_fill_bytes_and_standalone_markers() -> None:
    real = rgb_jpeg(41, 29)
    # Fill bytes before a marker, TEM and RST markers (no length field), a stray FF00.
    data = real[:2] + b"\xff\xff\xff\x01" + b"\xff\xd3" + b"\xff\x00" + b"\xff\xff" + real[2:]
    assert images.probe(data, WHERE) == ImageInfo("JPEG", 41, 29, 3)


def test_probe_skips_stray_bytes_before_a_marker_like_libjpeg() -> None:
    real = rgb_jpeg(41, 29)
    data = real[:2] + b"\x00\x12junk" + real[2:]
    assert images.probe(data, WHERE) == ImageInfo("JPEG", 41, 29, 3)


@pytest.mark.parametrize(
    "data, detail",
    [
        (encode(noise(8, 8), "GIF"), "GIF"),
        (b"<html><body>Access denied</body></html>", "text"),
        (b"just some text, no image\n", "starts with"),
        (b"", "empty"),
        (rgb_jpeg()[:20], "truncated"),
        (b"\xff\xd8", "truncated"),
        (b"\xff\xd8\xff\xe0\x00", "truncated"),
        (png()[:20], "PNG header truncated"),
        (b"\xff\xd8\xff\xda\x00\x08", "scan (SOS)"),
        (b"\xff\xd8\xff\xd9", "EOI"),
        (b"\xff\xd8\xff\xe0\x00\x01", "invalid length"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x10\x01\x01\x11\x00", "0"),
    ],
    ids=[
        "gif",
        "html",
        "text",
        "empty",
        "jpeg-cut",
        "soi-only",
        "jpeg-cut-in-length",
        "png-cut",
        "sos-first",
        "eoi",
        "bad-length",
        "zero-height",
    ],
)
def test_probe_rejects_what_is_not_a_jpeg_or_png(data: bytes, detail: str) -> None:
    with pytest.raises(ImageError) as caught:
        images.probe(data, WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: not a JPEG or PNG image (")
    assert detail in message


def test_probe_reads_nothing_past_the_frame_header() -> None:
    """What makes probing cheap: the answer comes from the markers up to the frame header (SOFn),
    skipped by their lengths, so the image data after it (most of the file) is never looked at."""
    data = encode(noise(400, 300), "JPEG", quality=85, icc_profile=b"\x00" * 3000)
    sof = data.index(b"\xff\xc0")
    header_end = sof + 2 + int.from_bytes(data[sof + 2 : sof + 4], "big")
    assert header_end < len(data) // 10  # the scan is the bulk of the file
    expected = ImageInfo("JPEG", 400, 300, 3)
    assert images.probe(data, WHERE) == expected
    assert images.probe(data[:header_end], WHERE) == expected
    assert images.probe(data[:header_end] + b"\x00" * 100_000, WHERE) == expected  # garbage after it


def test_needs_conversion() -> None:
    assert not ImageInfo("JPEG", 1, 1, 3).needs_conversion
    assert not ImageInfo("JPEG", 1, 1, 1).needs_conversion
    assert ImageInfo("JPEG", 1, 1, 4).needs_conversion
    assert ImageInfo("PNG", 1, 1, 3).needs_conversion


# --- prepare ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [rgb_jpeg(), gray_jpeg(), rgb_jpeg(64, 48, progressive=True)], ids=["rgb", "gray", "progressive"]
)
def test_prepare_keeps_rgb_and_grayscale_jpegs_unchanged(data: bytes) -> None:
    stored, info = images.prepare(data, WHERE)
    assert stored is data
    assert info == images.probe(data, WHERE)


@pytest.mark.parametrize(
    "data",
    [png(), png(40, 30, "RGBA"), png(40, 30, "L"), cmyk_jpeg()],
    ids=["png", "png-rgba", "png-gray", "cmyk"],
)
def test_prepare_converts_png_and_cmyk_to_rgb_jpeg(data: bytes) -> None:
    stored, info = images.prepare(data, WHERE)
    assert stored != data
    assert info == ImageInfo("JPEG", 40, 30, 3)
    assert images.probe(stored, WHERE) == info
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (40, 30)


def test_cmyk_conversion_keeps_the_colours() -> None:
    # Pillow stores CMYK JPEGs with the Adobe marker (inverted values) and undoes that on reading;
    # a converter that got the inversion wrong would give cyan instead of red.
    stored, _ = images.prepare(cmyk_jpeg(), WHERE)
    with Image.open(io.BytesIO(stored)) as image:
        r, g, b = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15


def test_png_conversion_keeps_the_pixels() -> None:
    # A smooth picture (noise would be blurred by the JPEG's chroma subsampling).
    y, x = np.mgrid[0:30, 0:40]
    array = np.stack([x * 6, y * 8, 255 - x * 3], axis=-1).astype(np.uint8)
    stored, _ = images.prepare(encode(Image.fromarray(array, "RGB"), "PNG"), WHERE)
    with Image.open(io.BytesIO(stored)) as image:
        difference = np.abs(np.asarray(image, dtype=float) - array.astype(float)).mean()
    assert difference < 2


def test_prepare_and_to_rgb_jpeg_name_where_on_damage() -> None:
    damaged_png = png()[:60]  # a valid header, then the data stops
    with pytest.raises(ImageError, match=f"^{WHERE}: cannot re-encode as RGB JPEG"):
        images.prepare(damaged_png, WHERE)
    with pytest.raises(ImageError, match=f"^{WHERE}: not a JPEG or PNG image"):
        images.prepare(b"GIF89a....", WHERE)
    with pytest.raises(ImageError, match=f"^{WHERE}: cannot re-encode"):
        images.to_rgb_jpeg(b"nonsense", WHERE)
