"""Regenerate this folder: SQuAD 2.0-shaped questions about short made-up biographies.

    python recipes/data/question_answering/make_squad.py

train.jsonl holds 600 questions, eval.jsonl 150 others, one JSON object a line with SQuAD's
columns: ``question``, ``context`` and ``answers`` ({"text": [...], "answer_start": [...]},
character offsets into the context). Each context tells of two to five people (a city, a trade, a
year); a question asks about one of them. About one question in six asks about a fact the context
does not give (empty answers: unanswerable, as in SQuAD 2.0), and some contexts run past 128
tokens, so the recipe's windows (max_length 128, stride 32) split them. No SQuAD data ships
offline with adaptkit; this is generated, deterministically (seed 0/1).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ["Amara", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kofi",
         "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamar", "Umar", "Vera"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Haddad", "Tanaka", "Novak", "Silva", "Kowalski", "Brennan", "Adeyemi"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Tromsø", "Valparaíso", "Tbilisi", "Quebec City", "Marrakesh",
          "Reykjavik", "Ljubljana", "Hanoi", "Cork"]
TRADES = ["a glassblower", "a bridge engineer", "a beekeeper", "a cartographer", "a ferry captain",
          "a violin maker", "a marine biologist", "a pastry chef", "a typesetter", "an air traffic controller"]
FILLER = ["The family kept a small garden behind the house.", "Winters there were long and dark.",
          "Friends remember a loud laugh and a bad singing voice.", "The local paper once printed a short profile.",
          "Weekends were spent walking by the water.", "There was always a dog somewhere nearby."]
QUESTIONS = {"city": ["Where does {name} live?", "In which city does {name} live?"],
             "trade": ["What does {name} do for a living?", "What is {name}'s job?"],
             "year": ["When was {name} born?", "In what year was {name} born?"]}


def person(rng: random.Random, used: set[str]) -> dict[str, str]:
    while True:  # first names differ within a context: "By trade, Nadia is ..." names one person
        first = rng.choice(FIRST)
        if first not in used:
            used.add(first)
            name = f"{first} {rng.choice(LAST)}"
            break
    facts = {"city": rng.choice(CITIES), "trade": rng.choice(TRADES), "year": str(rng.randint(1931, 2004))}
    # each fact is told or left out, so some questions have no answer in the context
    told = {k: v for k, v in facts.items() if rng.random() > 0.2}
    return {"name": name, **told}


def sentences(p: dict[str, str], rng: random.Random) -> list[tuple[str, str | None, str | None]]:
    """(sentence, fact kind, answer) triples telling what is known of one person."""
    out = []
    if "year" in p:
        out.append((f"{p['name']} was born in {p['year']}.", "year", p["year"]))
    if "city" in p:
        out.append((rng.choice([f"{p['name']} lives in {p['city']}.", f"These days {p['name']} lives in {p['city']}."]),
                    "city", p["city"]))
    if "trade" in p:
        first = p["name"].split()[0]
        out.append((f"By trade, {first} is {p['trade']}.", "trade", p["trade"].split(" ", 1)[1]))
    if not out:
        out.append((f"Little is known about {p['name']}.", None, None))
    return out


def example(rng: random.Random) -> dict[str, object]:
    used: set[str] = set()
    people = [person(rng, used) for _ in range(rng.randint(2, 5))]
    parts: list[tuple[str, str | None, str | None, int]] = []
    for index, p in enumerate(people):
        parts += [(s, k, a, index) for s, k, a in sentences(p, rng)]
        if rng.random() < 0.5:
            parts.append((rng.choice(FILLER), None, None, -1))
    subject = rng.randrange(len(people))
    kind = rng.choice(list(QUESTIONS))
    question = rng.choice(QUESTIONS[kind]).format(name=people[subject]["name"])
    context, answers = "", {"text": [], "answer_start": []}
    for sentence, fact, answer, owner in parts:
        start = len(context) + (1 if context else 0)
        context = f"{context} {sentence}" if context else sentence
        if owner == subject and fact == kind and answer is not None:
            answers = {"text": [answer], "answer_start": [start + sentence.index(answer)]}
    return {"question": question, "context": context, "answers": answers}


def write(name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with (HERE / name).open("w") as handle:
        for _ in range(count):
            handle.write(json.dumps(example(rng), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write("train.jsonl", 600, 0)
    write("eval.jsonl", 150, 1)
