"""What an image file really is, and making it what a TFRecord must hold: an RGB or grayscale JPEG.

The release has files that are not what their names claim (a PNG and 22 CMYK JPEGs among the
training images, see ``shared/ILSVRC2012.md``). Rather than trusting the reference lists of file
names, every image is identified from its header: :func:`probe` reads only the JPEG markers up to
the frame header (or the PNG ``IHDR`` chunk) without decoding anything, which is cheap enough to do
for all 1.33 million images. :func:`prepare` keeps a usable JPEG byte for byte and re-encodes
anything else to an RGB JPEG with Pillow, as every reference tool does.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from ilsvrc_assets import release

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Start-of-frame markers SOF0..SOF15. C4 (DHT), C8 (JPG, reserved) and CC (DAC) share the range
# but are not frame headers.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM and RST0..RST7.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA

# PNG colour type -> channels after decoding (a palette decodes to RGB).
_PNG_COMPONENTS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}

# Signatures worth naming when a file is neither JPEG nor PNG, so the error says what it is.
_OTHER_SIGNATURES = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"<", "text (HTML or XML?)"),
)


class ImageError(ValueError):
    """An image is damaged or of a kind the records cannot hold; the message names where it came from."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says about the image."""

    format: str  # "JPEG" or "PNG"
    width: int
    height: int
    # JPEG: 1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK. PNG: channels after decoding (palette -> 3).
    components: int

    @property
    def needs_conversion(self) -> bool:
        """True if the image must be re-encoded before it goes into a record.

        That is every PNG, and every JPEG that is not 1- or 3-component: 4 components are
        CMYK/YCCK, which the model zoo's readers cannot decode to RGB (and other counts are not
        decodable at all, so :func:`to_rgb_jpeg` will report them).
        """
        return self.format != "JPEG" or self.components not in (1, 3)


def _not_an_image(where: str, reason: str) -> ImageError:
    return ImageError(f"{where}: not a JPEG or PNG image ({reason})")


def _describe_start(data: bytes | memoryview) -> str:
    head = bytes(data[:16])
    for signature, what in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return f"it is {what}"
    return f"it starts with {head[:8]!r}"


def probe(data: bytes | memoryview, where: str) -> ImageInfo:
    """Identify a JPEG or PNG image from its header alone (nothing is decoded).

    For a JPEG, the markers are walked from SOI to the first frame header (SOFn), skipping each
    segment by its length, so the cost does not depend on the file size. ``where`` (e.g.
    ``"ILSVRC2012_img_train.tar member n01440764_10026.JPEG"``) starts every error message.
    Raises :class:`ImageError` for anything else: other formats, text, empty or truncated headers.
    """
    if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
        data = data.cast("B")
    n = len(data)
    if n == 0:
        raise _not_an_image(where, "the file is empty")
    if data[:2] == _JPEG_SOI:
        return _probe_jpeg(data, n, where)
    if data[:8] == _PNG_SIGNATURE:
        return _probe_png(data, n, where)
    raise _not_an_image(where, f"{n} bytes; {_describe_start(data)}")


def _probe_jpeg(data: bytes | memoryview, n: int, where: str) -> ImageInfo:
    pos = 2
    while True:
        if pos >= n:
            raise _not_an_image(where, f"JPEG header truncated at byte {n}, before any frame header (SOFn)")
        if data[pos] != 0xFF:
            # libjpeg skips stray bytes before a marker (with a warning) rather than failing, so
            # a decoder would accept such a file; skip them the same way. This only runs on
            # malformed files, so searching a copy is fine.
            found = bytes(data[pos:]).find(b"\xff")
            if found < 0:
                raise _not_an_image(where, f"no JPEG marker after byte {pos}, and no frame header (SOFn)")
            pos += found
        # Any number of 0xFF fill bytes may precede a marker code.
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise _not_an_image(where, f"JPEG header truncated at byte {n}, before any frame header (SOFn)")
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in _STANDALONE_MARKERS:
            continue  # FF00 outside scan data is stray (libjpeg skips it); TEM/RSTn carry no length
        if marker in (_SOI, _EOI, _SOS):
            name = {_SOI: "a second SOI", _EOI: "EOI", _SOS: "the scan (SOS)"}[marker]
            raise _not_an_image(where, f"JPEG has {name} at byte {pos - 2} before any frame header (SOFn)")
        if pos + 2 > n:
            raise _not_an_image(where, f"JPEG header truncated at byte {n}, inside marker FF{marker:02X}")
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _not_an_image(
                where, f"JPEG segment FF{marker:02X} at byte {pos - 2} has invalid length {length}"
            )
        if marker in _SOF_MARKERS:
            # Frame header: length(2) precision(1) height(2) width(2) components(1), then 3 bytes
            # per component.
            if pos + 8 > n:
                raise _not_an_image(
                    where, f"JPEG header truncated at byte {n}, inside the frame header (SOF)"
                )
            height = (data[pos + 3] << 8) | data[pos + 4]
            width = (data[pos + 5] << 8) | data[pos + 6]
            components = data[pos + 7]
            if components == 0 or length < 8 + 3 * components:
                raise _not_an_image(
                    where,
                    f"JPEG frame header (FF{marker:02X}) is malformed: {components} components, length {length}",
                )
            if width == 0 or height == 0:
                # Height 0 means "given later by a DNL marker", which no decoder the readers use
                # supports; width 0 is invalid.
                raise _not_an_image(
                    where, f"JPEG frame header (FF{marker:02X}) gives a size of {width}x{height}"
                )
            return ImageInfo("JPEG", width, height, components)
        pos += length


def _probe_png(data: bytes | memoryview, n: int, where: str) -> ImageInfo:
    # The IHDR chunk must come first: length(4)=13, type "IHDR", width(4), height(4), depth(1), colour type(1).
    if n < 8 + 8 + 13:
        raise _not_an_image(where, f"PNG header truncated: {n} bytes, IHDR needs 29")
    if bytes(data[8:16]) != b"\x00\x00\x00\x0dIHDR":
        raise _not_an_image(where, "PNG without an IHDR chunk first")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    color_type = data[25]
    if width == 0 or height == 0:
        raise _not_an_image(where, f"PNG header gives a size of {width}x{height}")
    if color_type not in _PNG_COMPONENTS:
        raise _not_an_image(where, f"PNG header has unknown colour type {color_type}")
    return ImageInfo("PNG", width, height, _PNG_COMPONENTS[color_type])


# How far from the end of a complete file its end marker may lie (trailing bytes after EOI/IEND
# are harmless and occur in the wild; a truncated file has no end marker at all).
_END_MARKER_WINDOW = 64


def check_complete(data: bytes | memoryview, info: ImageInfo, where: str) -> None:
    """Refuse an image whose bytes stop before its end (a truncated or cut archive member).

    Cheap for every complete file: a JPEG ends with EOI (``FFD9``, which cannot occur inside
    entropy-coded data) and a PNG with its ``IEND`` chunk, so only the last bytes are looked at.
    Only a file without its end marker is decoded, to tell one with harmless trailing bytes
    (accepted) from one whose data is cut short or damaged (:class:`ImageError` naming ``where``).
    """
    tail = bytes(data[-_END_MARKER_WINDOW:])
    if (b"\xff\xd9" if info.format == "JPEG" else b"IEND") in tail:
        return
    from PIL import Image  # only for the rare file without its end marker

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            image.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise ImageError(
            f"{where}: the {info.format} data is truncated or damaged ({type(e).__name__}: {e}); "
            f"the archive member is incomplete: fetch the archive again (or fix the stand-in release)"
        ) from e


def to_rgb_jpeg(data: bytes, where: str, quality: int = release.JPEG_QUALITY_FOR_CONVERTED) -> bytes:
    """Decode any image Pillow reads and re-encode it as an RGB JPEG at ``quality``.

    Pillow reads Adobe CMYK JPEGs (stored inverted) correctly, so ``convert("RGB")`` gives the
    right colours; alpha is dropped. Any Pillow failure becomes an :class:`ImageError` naming
    ``where``.
    """
    from PIL import Image  # only needed for the few images that are converted

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")  # loads (decodes) the whole image, so damage shows here
        out = io.BytesIO()
        # No ICC profile or EXIF is carried over: a CMYK profile would be wrong for RGB pixels.
        rgb.save(out, format="JPEG", quality=quality)
    except Exception as e:  # Pillow raises many types (OSError, ValueError, SyntaxError, ...)
        raise ImageError(f"{where}: cannot re-encode as RGB JPEG ({type(e).__name__}: {e})") from e
    return out.getvalue()


def prepare(data: bytes, where: str) -> tuple[bytes, ImageInfo]:
    """The bytes to store in a record for this image, and the :class:`ImageInfo` of those bytes.

    An RGB or grayscale JPEG is returned unchanged (the very same object; the reference stores
    grayscale as is and readers decode with ``channels=3``). A PNG or a CMYK/YCCK JPEG is
    re-encoded to an RGB JPEG. Detection is by header, so files outside the reference lists of
    PNG/CMYK images are caught too. A truncated image is refused (:func:`check_complete`).
    Raises :class:`ImageError` naming ``where``.
    """
    info = probe(data, where)
    if not info.needs_conversion:
        check_complete(data, info, where)  # re-encoding (below) decodes, so it finds damage itself
        return data, info
    converted = to_rgb_jpeg(bytes(data), where)
    new_info = probe(converted, f"{where} (re-encoded)")
    # A safety net: the record must hold a 3-component JPEG of the original size, whatever
    # Pillow does with unusual inputs (e.g. a 2-component JPEG it might read some other way).
    if new_info.components != 3 or (new_info.width, new_info.height) != (info.width, info.height):
        raise ImageError(
            f"{where}: re-encoding a {info.width}x{info.height} {info.format} with {info.components} components "
            f"gave a {new_info.width}x{new_info.height} JPEG with {new_info.components} components"
        )
    return converted, new_info
