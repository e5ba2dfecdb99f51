"""Captions for the image grids the stages write (the tokenizer's reconstructions, the prediction samples):
a white strip of text above the columns and a margin naming the rows, drawn at the grid's own pixel scale
with PIL's built-in bitmap font (no font files needed), so each figure says which part is what."""

from __future__ import annotations

import numpy as np

TEXT_H = 12  # pixel height of one line of the built-in font, with a little air


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def text_width(text: str) -> int:
    from PIL import Image, ImageDraw

    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font()))


def caption_grid(grid: np.ndarray, title: str | None = None, columns: list[tuple[int, int, str]] | None = None,
                 rows: list[tuple[int, int, str]] | None = None) -> np.ndarray:
    """``grid`` (H, W, 3 uint8) with a caption: ``title`` on a first line, ``columns`` ``(x0, x1, label)``
    centred over their pixel columns, ``rows`` ``(y0, y1, label)`` in a left margin. Returns a new array."""
    from PIL import Image, ImageDraw

    h, w = grid.shape[:2]
    margin = (max(text_width(label) for _, _, label in rows) + 6) if rows else 0
    top = TEXT_H * (bool(title) + bool(columns))
    width = max(w + margin, text_width(title) + 4 if title else 0)  # a long title widens the figure
    canvas = Image.new("RGB", (width, h + top), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (margin, top))
    draw, font, ink = ImageDraw.Draw(canvas), _font(), (0, 0, 0)
    if title:
        draw.text((2, 1), title, fill=ink, font=font)
    for x0, x1, label in columns or []:
        x = margin + (x0 + x1) // 2 - text_width(label) // 2
        draw.text((max(margin, x), top - TEXT_H + 1), label, fill=ink, font=font)
    for y0, y1, label in rows or []:
        draw.text((2, top + (y0 + y1) // 2 - TEXT_H // 2), label, fill=ink, font=font)
    return np.asarray(canvas)
