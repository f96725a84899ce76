"""Regenerates the bundled example images.

content.png: scikit-image's `chelsea` photograph (CC0, Stefan van der Walt), resized.
style.png:   an abstract painting of random brush strokes drawn here (seeded), CC0.

    pip install scikit-image && python nst_fast/examples/make_examples.py
"""
import math
import pathlib
import random

from PIL import Image, ImageDraw, ImageFilter

HERE = pathlib.Path(__file__).parent
PALETTE = [(20, 40, 120), (240, 200, 40), (200, 60, 30), (30, 120, 170), (250, 240, 220), (15, 15, 30)]


def make_content():
    from skimage import data

    img = Image.fromarray(data.chelsea())
    img.thumbnail((384, 384), Image.LANCZOS)
    img.save(HERE / "content.png", optimize=True)


def make_style(size=384, strokes=1400, seed=1889):
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), PALETTE[0])
    draw = ImageDraw.Draw(img)
    for _ in range(strokes):
        # Short curved strokes that swirl around a few centres, like a night sky.
        cx, cy = rng.choice([(0.3, 0.3), (0.7, 0.25), (0.5, 0.7)])
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        angle = math.atan2(y - cy * size, x - cx * size) + math.pi / 2 + rng.gauss(0, 0.3)
        colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in rng.choice(PALETTE))
        width = rng.randint(2, 7)
        points = [(x, y)]
        for _ in range(rng.randint(3, 8)):
            angle += rng.gauss(0, 0.25)
            x, y = x + 6 * math.cos(angle), y + 6 * math.sin(angle)
            points.append((x, y))
        draw.line(points, fill=colour, width=width, joint="curve")
    img.filter(ImageFilter.SMOOTH).save(HERE / "style.png", optimize=True)


if __name__ == "__main__":
    make_content()
    make_style()
