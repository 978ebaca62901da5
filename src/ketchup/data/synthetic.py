"""Seeded synthetic tasks shaped like the paper's, emitting the hub datasets' record schemas (the
generators a task names with ``generator:``; the paper tasks' presets name theirs).

They are small and regular enough that a tiny model learns them on a CPU in minutes, yet each
needs what the real task needs: content selection and paraphrase (xsum: which of several events is
the one the document comes back to, told in other words, with one detail a single reference picks
at random, so that even a perfect model stays near 80 ROUGE-1 as real references keep models well
below 100), lexical translation with Dutch word order and inflection (en_nl), and multi-step
arithmetic with a worked solution ending in ``#### <number>`` (gsm8k).
"""

from __future__ import annotations

import random
from typing import Any, Callable

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Finn", "Greta", "Hugo", "Ines", "Jonas",
         "Kim", "Lars", "Mila", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tess", "Victor"]
ROLES = ["teacher", "farmer", "doctor", "singer", "builder", "pilot", "baker", "writer"]
PLACES = ["Leeds", "Bristol", "Cardiff", "Dundee", "Exeter", "Glasgow", "Hull", "York", "Bath", "Derby"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# (document's verb phrase, the summary's paraphrase of it): the summary never copies the event.
# The phrase's last word is its topic, which no other event and no filler uses.
EVENTS = [
    ("opened a new library", "unveiled a library"),
    ("won the local election", "was elected to the council"),
    ("rescued a stranded dog", "saved a trapped dog"),
    ("repaired the old bridge", "fixed an ageing bridge"),
    ("founded a small charity", "set up a charity"),
    ("sold the family farm", "gave up the farm"),
    ("painted a giant mural", "created a huge artwork"),
    ("closed the town market", "shut down the market"),
    ("launched a bus service", "started a bus route"),
    ("planted a community garden", "grew a shared garden"),
    ("built a wooden boat", "made a timber boat"),
    ("found a rare coin", "discovered an unusual coin"),
    ("cancelled the summer festival", "called off the festival"),
    ("restored the village church", "renovated the church"),
    ("ran the city marathon", "completed the marathon"),
    ("wrote a best-selling novel", "published a hit book"),
]
# Every event sentence names its person's role, place and day; the event follows the name.
EVENT_SENTENCES = [
    "On {day} , {role} {name} {event} in {place}.",
    "In {place} , {role} {name} {event} on {day}.",
    "{place} {role} {name} {event} on {day}.",
]
# The salient event is the one whose person and topic the document mentions a second time: in a lead
# before the events (XSum's teaser) or in a reaction after them; its position among the events is
# random. (With the person alone, the tiny teacher found the person but not which event was theirs.)
LEADS = ["{name} and the {topic} made the news this week.", "All eyes were on {name} and the {topic}."]
REACTIONS = ["{name} said the {topic} made it a proud day.", "Friends of {name} were proud of the {topic}."]
FILLER = [
    "The weather was {adj} for most of the day.",
    "Local residents said they had not expected it.",
    "A spokesperson for the council declined to comment.",
    "Several people gathered near the {spot} to watch.",
    "{other} , who lives nearby , said the news was {adj}.",
    "The story was shared widely online by the evening.",
    "Police said there had been no problems in the {spot}.",
    "More details are expected to be released next week.",
]
ADJS = ["cold", "warm", "surprising", "welcome", "quiet", "busy"]
SPOTS = ["square", "station", "harbour", "park", "pier"]
# The summary adds one detail of the salient event, chosen at random: like a single human reference,
# nothing in the document says which, so no model can score full marks.
DETAILS = {"role": "{name} the {role} {event}.", "place": "{name} {event} in {place}.",
           "day": "{name} {event} on {day}."}


def xsum_record(rng: random.Random, idx: int) -> dict[str, Any]:
    """A few events about different people; the summary paraphrases the one the document returns to."""
    n_events = rng.randint(2, 3)
    names = rng.sample(NAMES, n_events + 1)  # the last is a bystander a filler may quote
    events = rng.sample(EVENTS, n_events)
    facts = [dict(name=n, role=rng.choice(ROLES), place=rng.choice(PLACES), day=rng.choice(DAYS))
             for n in names[:n_events]]
    body = [rng.choice(EVENT_SENTENCES).format(event=doc, **f) for (doc, _), f in zip(events, facts)]
    salient = rng.randrange(n_events)
    (doc, paraphrase), person = events[salient], facts[salient]
    mention = dict(name=person["name"], topic=doc.split()[-1])
    if rng.random() < 0.5:
        sentences = [rng.choice(LEADS).format(**mention)] + body
    else:
        sentences = body + [rng.choice(REACTIONS).format(**mention)]
    for filler in rng.sample(FILLER, rng.randint(1, 2)):  # never first, where a lead goes
        text = filler.format(adj=rng.choice(ADJS), spot=rng.choice(SPOTS), other=names[-1])
        sentences.insert(rng.randint(1, len(sentences)), text)
    summary = DETAILS[rng.choice(list(DETAILS))].format(event=paraphrase, **person)
    return {"document": "\n".join(sentences), "summary": summary, "id": f"synth-xsum-{idx}"}


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


def generate(generator: str, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` records of ``generator`` (a task's ``generator`` key) for ``split``; the same
    (generator, split, n, seed) gives the same records, whatever the task is called."""
    rng = random.Random(f"{generator}/{split}/{seed}")
    return [GENERATORS[generator](rng, SPLIT_OFFSETS[split] * 10_000_000 + i) for i in range(n)]
