"""Regenerate this folder: small images of a red, green or blue square or bar, and their captions.

    python recipes/data/captions/make_captions.py

train.csv names 96 images (every fourth with a second caption on its own row), eval.csv 24 others;
image paths are relative to this folder (the recipes set task.image_folder to it).
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 210)}
SHAPES = ("square", "bar")


def draw(path: Path, colour: str, shape: str, rng: random.Random) -> None:
    image = Image.new("RGB", (32, 32), (235, 235, 235))
    side = rng.randint(12, 20)
    x, y = rng.randint(1, 31 - side), rng.randint(1, 31 - side)
    box = [x, y, x + side, y + side] if shape == "square" else [0, y, 31, y + side // 3]
    ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
    image.save(path, optimize=True)


def table(name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    (HERE / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        colour, shape = list(COLOURS)[i % 3], SHAPES[(i // 3) % 2]
        image = f"images/{name}-{i:03d}.png"
        draw(HERE / image, colour, shape, rng)
        rows.append({"image": image, "caption": f"there is a {colour} {shape}"})
        if i % 4 == 0:
            rows.append({"image": image, "caption": f"the picture shows a {colour} {shape}"})
    with (HERE / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    table("train", 96, 1)
    table("eval", 24, 2)
