"""Write the small example images of the demos into examples/images/.

Deterministic (Pillow drawing only, no randomness, no network): shapes, solid
colours, a gradient, a checkerboard and rendered words, each 160x120 and a few
KB, plus ``captions.jsonl`` with one ``{"file": ..., "caption": ...}`` per image
for the index / evaluation demos.

    python scripts/make_example_images.py [--out examples/images]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

W, H = 160, 120
SS = 4  # draw at 4x and downsample, for smooth edges without antialiasing support in ImageDraw

Painter = Callable[[ImageDraw.ImageDraw, int], None]


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10.1 ships a scalable default font when FreeType is available;
    # otherwise the fixed bitmap font is used (smaller, still legible).
    try:
        return ImageFont.load_default(size=px)
    except TypeError:
        return ImageFont.load_default()


def _render(background: tuple[int, int, int], paint: Painter) -> Image.Image:
    big = Image.new("RGB", (W * SS, H * SS), background)
    paint(ImageDraw.Draw(big), SS)
    return big.resize((W, H), Image.Resampling.LANCZOS)


def _circle(fill: tuple[int, int, int]) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        d.ellipse([(45 * s, 25 * s), (115 * s, 95 * s)], fill=fill)

    return paint


def _square(fill: tuple[int, int, int]) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        d.rectangle([(45 * s, 25 * s), (115 * s, 95 * s)], fill=fill)

    return paint


def _triangle(fill: tuple[int, int, int]) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        d.polygon([(80 * s, 20 * s), (120 * s, 100 * s), (40 * s, 100 * s)], fill=fill)

    return paint


def _star(fill: tuple[int, int, int]) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        pts = []
        for k in range(10):
            r = 42 if k % 2 == 0 else 17
            a = -math.pi / 2 + k * math.pi / 5
            pts.append(((80 + r * math.cos(a)) * s, (62 + r * math.sin(a)) * s))
        d.polygon(pts, fill=fill)

    return paint


def _two_circles(fill: tuple[int, int, int]) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        d.ellipse([(18 * s, 35 * s), (68 * s, 85 * s)], fill=fill)
        d.ellipse([(92 * s, 35 * s), (142 * s, 85 * s)], fill=fill)

    return paint


def _word(text: str, fill: tuple[int, int, int], px: int = 48) -> Painter:
    def paint(d: ImageDraw.ImageDraw, s: int) -> None:
        d.text((80 * s, 60 * s), text, fill=fill, font=_font(px * s), anchor="mm")

    return paint


def _stop_sign(d: ImageDraw.ImageDraw, s: int) -> None:
    pts = [((80 + 52 * math.cos(math.pi / 8 + k * math.pi / 4)) * s,
            (60 + 52 * math.sin(math.pi / 8 + k * math.pi / 4)) * s) for k in range(8)]
    d.polygon(pts, fill=(200, 16, 32))
    d.text((80 * s, 60 * s), "STOP", fill=(255, 255, 255), font=_font(30 * s), anchor="mm")


def _checkerboard(d: ImageDraw.ImageDraw, s: int) -> None:
    for row in range(6):
        for col in range(8):
            if (row + col) % 2 == 0:
                d.rectangle([(col * 20 * s, row * 20 * s), ((col + 1) * 20 * s - 1, (row + 1) * 20 * s - 1)],
                            fill=(0, 0, 0))


def _gradient() -> Image.Image:
    # Sunset: orange at the bottom to purple at the top, one colour per row.
    im = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(im)
    top, bottom = (70, 30, 120), (250, 140, 40)
    for y in range(H):
        t = y / (H - 1)
        d.line([(0, y), (W - 1, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return im


WHITE = (255, 255, 255)

# file name -> (caption, image factory)
EXAMPLES: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "red_circle.png": ("a red circle", lambda: _render(WHITE, _circle((220, 30, 30)))),
    "blue_square.png": ("a blue square", lambda: _render(WHITE, _square((30, 60, 210)))),
    "green_triangle.png": ("a green triangle", lambda: _render(WHITE, _triangle((30, 160, 60)))),
    "yellow_star.png": ("a yellow star on a dark blue background",
                        lambda: _render((20, 30, 80), _star((250, 210, 40)))),
    "two_blue_circles.png": ("two blue circles", lambda: _render(WHITE, _two_circles((40, 90, 220)))),
    "solid_purple.png": ("a plain purple image", lambda: Image.new("RGB", (W, H), (120, 40, 160))),
    "solid_black.png": ("a completely black image", lambda: Image.new("RGB", (W, H), (0, 0, 0))),
    "sunset_gradient.jpg": ("a gradient from orange to purple like a sunset sky", _gradient),
    "checkerboard.png": ("a black and white checkerboard pattern", lambda: _render(WHITE, _checkerboard)),
    "stop_sign.png": ("a red stop sign with the word STOP", lambda: _render(WHITE, _stop_sign)),
    "word_hello.png": ("the word hello written in black", lambda: _render(WHITE, _word("hello", (0, 0, 0)))),
    "word_cat.jpg": ("the word cat", lambda: _render((250, 245, 225), _word("cat", (60, 40, 20), px=64))),
}


def write_examples(out: Path) -> list[Path]:
    """Write every example image and captions.jsonl into ``out``; return the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, (_, make) in EXAMPLES.items():
        path = out / file
        im = make()
        if path.suffix == ".jpg":
            im.save(path, format="JPEG", quality=90)
        else:
            im.save(path, format="PNG", optimize=True)
        written.append(path)
    captions = out / "captions.jsonl"
    with open(captions, "w", encoding="utf-8", newline="\n") as f:
        for file, (caption, _) in EXAMPLES.items():
            f.write(json.dumps({"file": file, "caption": caption}) + "\n")
    written.append(captions)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(__file__).resolve().parents[1] / "examples" / "images"
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args()
    for path in write_examples(args.out):
        print(f"{path.stat().st_size:7d}  {path}")


if __name__ == "__main__":
    main()
