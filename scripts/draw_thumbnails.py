"""Thumbnails of the example workflows: `python scripts/draw_thumbnails.py` (any Python with Pillow, e.g. ComfyUI's).

ComfyUI's template browser shows `example_workflows/<name>.jpg` beside `<name>.json`. Each thumbnail is a title card
drawn here, not a render: the example's title, its one-line description and the chain of nodes it runs, read from
the workflow file (node names from locales/en/nodeDefs.json). (Pictures need the real models; the tiny demo models give noise.)
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

from PIL import Image, ImageDraw, ImageFont

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(PACK, "example_workflows")
SIZE = (512, 512)
BACKGROUND, ACCENT, TEXT, MUTED = (24, 28, 38), (230, 170, 60), (240, 240, 240), (160, 168, 184)
VIRTUAL = {"Note", "MarkdownNote"}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def node_chain(workflow: dict, names: dict[str, str]) -> list[str]:
    """The nodes' names in the order they run (the editor's `order`), notes left out."""
    nodes = sorted((n for n in workflow["nodes"] if n["type"] not in VIRTUAL), key=lambda n: n.get("order", 0))
    return [names.get(n["type"]) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", n["type"]) for n in nodes]


def draw(title: str, description: str, chain: list[str]) -> Image.Image:
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, SIZE[0], 10), fill=ACCENT)
    y = 36
    for line in textwrap.wrap(title, 20):
        draw.text((28, y), line, font=_font(40), fill=TEXT)
        y += 48
    y += 10
    for line in textwrap.wrap(description, 44):
        draw.text((28, y), line, font=_font(19), fill=MUTED)
        y += 25
    y += 16
    for line in textwrap.wrap(" > ".join(chain), 52):
        if y > SIZE[1] - 40:
            break
        draw.text((28, y), line, font=_font(16), fill=ACCENT)
        y += 21
    draw.text((28, SIZE[1] - 34), "Sana + Wan2.1 for ComfyUI", font=_font(16), fill=MUTED)
    return image


def main() -> int:
    with open(os.path.join(PACK, "locales", "en", "nodeDefs.json"), encoding="utf-8") as f:
        names = {node: entry["display_name"] for node, entry in json.load(f).items()}
    for file in sorted(os.listdir(EXAMPLES)):
        if not file.endswith(".json"):
            continue
        with open(os.path.join(EXAMPLES, file), encoding="utf-8") as f:
            workflow = json.load(f)
        title = file.removesuffix(".json")
        card = draw(title, workflow["extra"]["sana_wan"]["description"], node_chain(workflow, names))
        card.save(os.path.join(EXAMPLES, f"{title}.jpg"), quality=88)
        print(f"example_workflows/{title}.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
