"""Contact sheets: small images laid out in a grid with captions, drawn with Pillow.

The pictures of :mod:`ilsvrc_assets.previews` that show images (boxes on training and validation
images, one image per class of the validation tree, the first records of a shard, the converted
images before and after) are all a grid of tiles: an image fitted into a square, centred, with a
caption of a few short lines under it. This module draws such grids and encodes them as small,
deterministic PNGs: the same tiles give the same bytes (Pillow writes no time or version into a
PNG, the font is Pillow's own built-in one, and the palette is chosen without dithering).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

KEPT_COLOUR = (0, 255, 0)  # pure colours, so a test (or a reader) can find the boxes by colour
DROPPED_COLOUR = (255, 0, 255)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
BOX_WIDTH = 2
DASH = 4  # pixels drawn, then pixels skipped, along a dropped box's edges
FONT_SIZE = 10
LINE_HEIGHT = 12
PADDING = 4
_BOX_COLOURS = (KEPT_COLOUR, DROPPED_COLOUR)  # the last two palette entries of a sheet
_BOX_INDEX = {KEPT_COLOUR: 256 - len(_BOX_COLOURS), DROPPED_COLOUR: 256 - len(_BOX_COLOURS) + 1}


@dataclass(frozen=True)
class Box:
    """A box to draw on a tile, in coordinates normalised to the image ([0, 1]); dashed if dropped."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    kept: bool = True


@dataclass(frozen=True)
class Tile:
    """One image of a sheet: its encoded bytes (any format Pillow reads), caption lines, boxes."""

    data: bytes
    caption: tuple[str, ...]
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where a tile's image was drawn on the sheet: top-left corner and drawn size, in pixels."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Sheet:
    """A drawn sheet: the PNG and where each tile's image lies on it (in tile order)."""

    png: bytes
    placements: tuple[Placement, ...] = field(default=())


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def decode(data: bytes, size: int) -> Image.Image:
    """``data`` decoded as RGB, scaled to fit a ``size`` x ``size`` square (up or down).

    Large JPEGs are decoded at a reduced scale straight away (``draft``), so a 500 x 375 photo
    costs a fraction of a full decode. Raises ValueError when Pillow cannot read it.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))
            rgb = image.convert("RGB")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from e
    scale = size / max(rgb.size)
    target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(target, Image.Resampling.BILINEAR) if target != rgb.size else rgb


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    font = _font()
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _dashed_line(draw: ImageDraw.ImageDraw, start: tuple[int, int], end: tuple[int, int]) -> None:
    (x0, y0), (x1, y1) = start, end
    length = max(abs(x1 - x0), abs(y1 - y0))
    if length == 0:
        draw.rectangle((x0, y0, x0 + BOX_WIDTH - 1, y0 + BOX_WIDTH - 1), fill=_BOX_INDEX[DROPPED_COLOUR])
        return
    for s in range(0, length + 1, 2 * DASH):
        e = min(s + DASH, length)
        a = (x0 + (x1 - x0) * s // length, y0 + (y1 - y0) * s // length)
        b = (x0 + (x1 - x0) * e // length, y0 + (y1 - y0) * e // length)
        draw.line((a, b), fill=_BOX_INDEX[DROPPED_COLOUR], width=BOX_WIDTH)


def _draw_box(draw: ImageDraw.ImageDraw, placement: Placement, box: Box) -> None:
    """Draw ``box`` on a palette image whose last two entries are the box colours."""
    x0 = placement.left + round(box.xmin * placement.width)
    x1 = placement.left + round(box.xmax * placement.width)
    y0 = placement.top + round(box.ymin * placement.height)
    y1 = placement.top + round(box.ymax * placement.height)
    if box.kept:
        draw.rectangle((x0, y0, x1, y1), outline=_BOX_INDEX[KEPT_COLOUR], width=BOX_WIDTH)
        return
    # Each edge drawn left to right or top to bottom, once: a dropped box of zero width or height
    # has two edges in one place, and their dashes must fall on each other.
    edges = {((x0, y0), (x1, y0)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1)), ((x1, y0), (x1, y1))}
    for start, end in sorted(edges):
        _dashed_line(draw, start, end)


def draw_sheet(tiles: Sequence[Tile], columns: int, size: int, caption_lines: int = 2) -> Sheet:
    """Lay ``tiles`` out ``columns`` to a row, each image fitted into ``size`` x ``size``.

    Each tile's boxes are drawn on its image (kept: solid, :data:`KEPT_COLOUR`; dropped: dashed,
    :data:`DROPPED_COLOUR`); its caption lines (at most ``caption_lines``, each cut to the tile's
    width) go under it. A tile whose bytes Pillow cannot read shows its caption and "unreadable".
    """
    cell_w = size + 2 * PADDING
    cell_h = size + 2 * PADDING + caption_lines * LINE_HEIGHT
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (max(1, min(columns, len(tiles))) * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    placements = []
    for i, tile in enumerate(tiles):
        cell_x, cell_y = (i % columns) * cell_w, (i // columns) * cell_h
        caption = list(tile.caption)
        try:
            image = decode(tile.data, size)
        except ValueError:
            image = None
            caption = [*caption[: caption_lines - 1], "unreadable image"]
        if image is not None:
            left = cell_x + PADDING + (size - image.width) // 2
            top = cell_y + PADDING + (size - image.height) // 2
            sheet.paste(image, (left, top))
            placements.append(Placement(left, top, image.width, image.height))
        else:
            placements.append(Placement(cell_x + PADDING, cell_y + PADDING, 0, 0))
        for line, text in enumerate(caption[:caption_lines]):
            draw.text(
                (cell_x + PADDING, cell_y + size + PADDING + 1 + line * LINE_HEIGHT),
                _fit_text(draw, text, size),
                fill=TEXT_COLOUR,
                font=_font(),
            )
    # A photo sheet as a full-colour PNG is several hundred KB, with a 256-colour palette about a
    # third of that (a materialisation's metadata must stay under 1 MB). The boxes are drawn
    # after the quantisation, in two palette entries of their own, so their colours stay exact.
    quantised = sheet.quantize(colors=256 - len(_BOX_COLOURS), method=Image.Quantize.FASTOCTREE)
    palette = quantised.getpalette()[: 3 * (256 - len(_BOX_COLOURS))]
    palette += [0] * (3 * (256 - len(_BOX_COLOURS)) - len(palette))
    for colour in _BOX_COLOURS:
        palette.extend(colour)
    quantised.putpalette(palette)
    draw = ImageDraw.Draw(quantised)
    for tile, placement in zip(tiles, placements):
        if placement.width:
            for box in tile.boxes:
                _draw_box(draw, placement, box)
    out = io.BytesIO()
    quantised.save(out, format="PNG")  # optimize=True: 0.5 % smaller, 5 times slower
    return Sheet(png=out.getvalue(), placements=tuple(placements))
