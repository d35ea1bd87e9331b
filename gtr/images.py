"""Writing images: one PNG, and a captioned grid (sample runs, the tiny world's rows)."""
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_png(image, path):
    """uint8 (H, W, C) -> PNG (grey when C == 1)."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_grid(images, path, columns=None, caption=None, scale=1, pad=2):
    """Tile uint8 images (k, H, W, C) row by row, `columns` a row (default: near-square), enlarged
    `scale` times, with an optional caption line above (what the grid shows, e.g. the row and the
    class order). Returns the path."""
    k, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255 if caption else 0, dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        grid[y:y + h, x:x + w] = image
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if caption:
        font = ImageFont.load_default()
        lines = caption.splitlines()
        height = 4 + 14 * len(lines)
        framed = Image.new(picture.mode, (picture.width, picture.height + height), "white")
        framed.paste(picture, (0, height))
        draw = ImageDraw.Draw(framed)
        for j, line in enumerate(lines):
            draw.text((4, 2 + 14 * j), line, fill="black", font=font)
        picture = framed
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
