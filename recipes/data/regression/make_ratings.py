"""Regenerate this folder: short reviews and the 1-5 rating each one implies (a regression target).

    python recipes/data/regression/make_ratings.py

train.csv holds 600 reviews, eval.csv 200 others. A review pairs an opinion word whose strength
sets the rating ("dreadful" 1.0 ... "superb" 5.0) with a degree word that pulls it towards the
middle or away from it ("somewhat", "truly"), in one of several sentence frames, with a little
noise: the rating is a number, not a class, and words a model has never seen in training
(each opinion word appears in only some frames) still carry their meaning to a pretrained model.
No real rating data ships offline with adaptkit; this is generated, deterministically (seed 0/1).
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPINIONS = {"dreadful": 1.0, "awful": 1.2, "terrible": 1.3, "poor": 1.8, "weak": 2.0, "dull": 2.2,
            "mediocre": 2.5, "uneven": 2.7, "ordinary": 3.0, "decent": 3.4, "pleasant": 3.6, "solid": 3.8,
            "good": 4.0, "great": 4.4, "excellent": 4.7, "wonderful": 4.8, "superb": 5.0}
DEGREES = {"somewhat": 0.5, "fairly": 0.7, "": 1.0, "really": 1.2, "truly": 1.3}
SUBJECTS = ["the film", "the acting", "the plot", "the soundtrack", "the ending", "the dialogue",
            "the camera work", "the lead performance"]
FRAMES = ["{subject} was {degree} {opinion}.", "honestly, {subject} felt {degree} {opinion}.",
          "i found {subject} {degree} {opinion}, all things considered.",
          "{subject}? {degree} {opinion}, if you ask me."]


def review(rng: random.Random) -> dict[str, object]:
    opinion = rng.choice(list(OPINIONS))
    degree = rng.choice(list(DEGREES))
    # the degree scales the distance from the middle (3.0): "somewhat awful" is milder than "awful"
    rating = 3.0 + (OPINIONS[opinion] - 3.0) * DEGREES[degree] + rng.gauss(0.0, 0.15)
    text = rng.choice(FRAMES).format(subject=rng.choice(SUBJECTS), degree=degree, opinion=opinion)
    return {"text": " ".join(text.split()), "rating": round(min(5.0, max(1.0, rating)), 2)}


def write(name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with (HERE / name).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "rating"])
        writer.writeheader()
        writer.writerows(review(rng) for _ in range(count))


if __name__ == "__main__":
    write("train.csv", 600, 0)
    write("eval.csv", 200, 1)
