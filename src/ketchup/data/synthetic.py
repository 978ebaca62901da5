"""Seeded synthetic tasks shaped like the paper's, emitting the hub datasets' record schemas.

They are small and regular enough that a tiny model learns them on a CPU in a minute, yet each
needs what the real task needs: picking the salient facts out of a longer document (xsum),
lexical translation with Dutch word order and inflection (en_nl), and multi-step arithmetic with a
worked solution ending in ``#### <number>`` (gsm8k).
"""

from __future__ import annotations

import random
from typing import Any, Callable

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Finn", "Greta", "Hugo", "Ines", "Jonas",
         "Kim", "Lars", "Mila", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tess", "Victor"]
ROLES = ["teacher", "farmer", "doctor", "singer", "builder", "pilot", "baker", "writer"]
PLACES = ["Leeds", "Bristol", "Cardiff", "Dundee", "Exeter", "Glasgow", "Hull", "York", "Bath", "Derby"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
EVENTS = [  # (past verb, object)
    ("opened", "a new library"), ("won", "the local election"), ("rescued", "a stranded dog"),
    ("repaired", "the old bridge"), ("founded", "a small charity"), ("sold", "the family farm"),
    ("painted", "a giant mural"), ("closed", "the town market"), ("launched", "a bus service"),
    ("planted", "a community garden"), ("built", "a wooden boat"), ("found", "a rare coin"),
]
FILLER = [
    "The weather was {adj} for most of the day.",
    "Local residents said they had not expected {it}.",
    "A spokesperson for the council declined to comment.",
    "Several people gathered near the {spot} to watch.",
    "{other} , who lives nearby , said the news was {adj}.",
    "The story was shared widely online by the evening.",
    "Police said there had been no problems in the {spot}.",
    "More details are expected to be released next week.",
]
ADJS = ["cold", "warm", "surprising", "welcome", "quiet", "busy"]
SPOTS = ["square", "station", "harbour", "park", "church"]


def xsum_record(rng: random.Random, idx: int) -> dict[str, Any]:
    """One-sentence summary of who did what, where and when, hidden in a longer document."""
    name, role, place, day = rng.choice(NAMES), rng.choice(ROLES), rng.choice(PLACES), rng.choice(DAYS)
    verb, obj = rng.choice(EVENTS)
    other = rng.choice([n for n in NAMES if n != name])
    lead = rng.choice([
        f"On {day} , {name} , a {role} from {place} , {verb} {obj}.",
        f"{name} , a {role} , {verb} {obj} in {place} on {day}.",
        f"A {role} called {name} {verb} {obj} on {day} in {place}.",
    ])
    fillers = [f.format(adj=rng.choice(ADJS), it="it", spot=rng.choice(SPOTS), other=other)
               for f in rng.sample(FILLER, rng.randint(1, 3))]
    sentences = fillers[:1] + [lead] + fillers[1:]
    return {
        "document": "\n".join(sentences),
        "summary": f"{name} {verb} {obj} in {place} on {day}.",
        "id": f"synth-xsum-{idx}",
    }


# English -> Dutch lexicon; Dutch nouns carry their article (de/het), adjectives inflect with -e
# after a definite article, and a fronted time adverb moves the verb before the subject (V2).
NOUNS = {"dog": ("hond", "de"), "cat": ("kat", "de"), "house": ("huis", "het"), "child": ("kind", "het"),
         "man": ("man", "de"), "woman": ("vrouw", "de"), "book": ("boek", "het"), "car": ("auto", "de"),
         "bird": ("vogel", "de"), "garden": ("tuin", "de"), "letter": ("brief", "de"), "bread": ("brood", "het"),
         "horse": ("paard", "het"), "table": ("tafel", "de"), "city": ("stad", "de"), "boat": ("boot", "de")}
VERBS = {"sees": "ziet", "saw": "zag", "finds": "vindt", "found": "vond", "buys": "koopt", "bought": "kocht",
         "likes": "mag", "liked": "mocht", "paints": "schildert", "painted": "schilderde",
         "carries": "draagt", "carried": "droeg", "follows": "volgt", "followed": "volgde"}
ADJECTIVES = {"big": "groot", "small": "klein", "old": "oud", "new": "nieuw", "red": "rood",
              "green": "groen", "beautiful": "mooi", "quiet": "stil"}
TIMES = {"Today": "Vandaag", "Yesterday": "Gisteren", "Tomorrow": "Morgen", "Often": "Vaak"}


def _adj_nl(adj: str, article: str, definite: bool) -> str:
    nl = ADJECTIVES[adj]
    # Dutch drops the -e only for indefinite het-words ("een groot huis" vs "het grote huis").
    if not definite and article == "het":
        return nl
    doubled = {"groot": "grote", "rood": "rode", "klein": "kleine", "oud": "oude", "nieuw": "nieuwe",
               "groen": "groene", "mooi": "mooie", "stil": "stille"}
    return doubled[nl]


def _np(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(list(NOUNS))
    nl_noun, article = NOUNS[noun]
    definite = rng.random() < 0.6
    adj = rng.choice(list(ADJECTIVES)) if rng.random() < 0.5 else None
    words = ([adj] if adj else []) + [noun]
    en = ["the" if definite else ("an" if words[0][0] in "aeiou" else "a")] + words
    nl = [article if definite else "een"] + ([_adj_nl(adj, article, definite)] if adj else []) + [nl_noun]
    return " ".join(en), " ".join(nl)


def en_nl_record(rng: random.Random, idx: int) -> dict[str, Any]:
    subj_en, subj_nl = _np(rng)
    obj_en, obj_nl = _np(rng)
    verb = rng.choice(list(VERBS))
    if rng.random() < 0.4:
        time = rng.choice(list(TIMES))
        en = f"{time} {subj_en} {verb} {obj_en}."
        nl = f"{TIMES[time]} {VERBS[verb]} {subj_nl} {obj_nl}."
    else:
        en = f"{subj_en} {verb} {obj_en}."
        nl = f"{subj_nl} {VERBS[verb]} {obj_nl}."
    return {"translation": {"en": en[0].upper() + en[1:], "nl": nl[0].upper() + nl[1:]}, "id": f"synth-en_nl-{idx}"}


ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "shells", "cards"]


def gsm8k_record(rng: random.Random, idx: int) -> dict[str, Any]:
    """Two-step word problem; the answer shows each step with a calculator annotation, like GSM8K."""
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    first = a + b
    c = rng.randint(1, first - 1)
    final = first - c
    question = (f"{name} has {a} {item}. {name} buys {b} more {item}. "
                f"Then {name} gives {c} {item} to {friend}. How many {item} does {name} have now?")
    answer = (f"{name} has {a} + {b} = <<{a}+{b}={first}>>{first} {item}.\n"
              f"After giving {c} away, {name} has {first} - {c} = <<{first}-{c}={final}>>{final} {item}.\n"
              f"#### {final}")
    return {"question": question, "answer": answer}


GENERATORS: dict[str, Callable[[random.Random, int], dict[str, Any]]] = {
    "xsum": xsum_record, "en_nl": en_nl_record, "gsm8k": gsm8k_record,
}
SPLIT_OFFSETS = {"train": 0, "dev": 1, "test": 2}


def generate(task: str, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` records of ``task`` for ``split``; the same (task, split, n, seed) gives the same records."""
    rng = random.Random(f"{task}/{split}/{seed}")
    return [GENERATORS[task](rng, SPLIT_OFFSETS[split] * 10_000_000 + i) for i in range(n)]
