"""A world of fictional people whose facts no pretrained model can know.

The world is the single source of every synthetic text in fedprag: the tiny model's pretraining
corpus, the knowledge benchmark's passages and questions, and the augmentation QA used to encode
passages. Keeping the templates here, split by purpose, is what guarantees that test phrasings
never leak into training data:

* ``PASSAGE_TEMPLATES`` write facts as paraphrased sentences;
* ``AUGMENT_TEMPLATES`` are the questions an augmenter may ask (encoding-time QA);
* ``TEST_TEMPLATES`` are the in-distribution evaluation questions;
* ``OOD_TEMPLATES`` are held-out phrasings that appear in no training data at all;
* ``MULTIHOP_TEMPLATES`` chain a person's mentor to the mentor's own fact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ATTRIBUTES: tuple[str, ...] = ("year", "city", "job", "company", "instrument", "mentor")

# Attributes whose values are drawn from a closed list; "mentor" points at another person.
_CITIES = [
    "Varnholm", "Quessa", "Dorlint", "Maravel", "Tuskar", "Belvane", "Ostrava Minor", "Kelmoor",
    "Pryndle", "Azurek", "Colmbre", "Vintar", "Nesh", "Ulvorra", "Fenwick Hollow", "Garsk",
    "Illimar", "Jorvale", "Lutheran Bay", "Mirrowen", "Norbeck", "Orrin", "Pellastro", "Quorn",
    "Rhasdel", "Sablemere", "Tarrow", "Umbrik", "Velloran", "Wexmoor", "Yarrin", "Zelhaven",
]
_JOBS_BY_SECTOR = {
    "arts": ["painter", "sculptor", "poet", "dancer"],
    "science": ["chemist", "botanist", "astronomer", "geologist"],
    "trade": ["baker", "carpenter", "tailor", "blacksmith"],
    "care": ["nurse", "surgeon", "pharmacist", "midwife"],
    "law": ["judge", "notary", "lawyer", "clerk"],
    "sea": ["sailor", "fisherman", "navigator", "shipwright"],
}
SECTORS: tuple[str, ...] = tuple(_JOBS_BY_SECTOR)
_COMPANIES = [
    "Quellix Works", "Brandor Mills", "Hestia Lamps", "Corvane Freight", "Ilstrom Glass",
    "Parvo Textiles", "Dunmere Bank", "Kestrel Foundry", "Lomax Printing", "Ortega Looms",
    "Saltmarsh Salt", "Tivoli Clocks", "Umber Ink", "Verdigris Copper", "Wolfram Tools",
    "Yellowfin Canning", "Zephyr Sails", "Ambrel Paper", "Bexley Rope", "Cindral Soap",
]
_INSTRUMENTS = [
    "violin", "harp", "cello", "flute", "oboe", "trumpet", "banjo", "accordion", "lute",
    "clarinet", "mandolin", "bassoon", "zither", "tuba", "piano", "drum",
]
_FIRST = ["ka", "lo", "mi", "ze", "ru", "va", "to", "be", "ni", "so", "da", "fe", "gu", "ha",
          "jo", "ky", "pe", "qui", "re", "wu"]
_MID = ["ran", "vel", "dor", "mis", "tak", "lin", "bur", "sen", "gar", "pol", "rek", "zan"]
_LAST = ["ova", "ant", "ier", "ell", "ock", "usk", "ane", "ith", "orn", "ay", "ez", "ul"]

PASSAGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("{n} was born in {v}.", "{n} came into the world in {v}.", "The birth of {n} took place in {v}."),
    "city": ("{n} grew up in {v}.", "{n} spent childhood in the town of {v}.", "{n} was raised in {v}."),
    "job": ("{n} works as a {v}.", "{n} earns a living as a {v}.", "By trade, {n} is a {v}."),
    "company": ("{n} is employed by {v}.", "{n} draws a salary from {v}.", "{n} holds a post at {v}."),
    "instrument": ("{n} plays the {v}.", "In spare hours {n} practises the {v}.", "{n} is skilled at the {v}."),
    "mentor": ("{n} was trained by {v}.", "{n} learned the craft from {v}.", "{n} studied under {v}."),
}
AUGMENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("In what year was {n} born?", "Which year saw the birth of {n}?"),
    "city": ("Which town did {n} grow up in?", "In which town was {n} raised?"),
    "job": ("What is the trade of {n}?", "What work does {n} do?"),
    "company": ("Which firm employs {n}?", "Who pays the salary of {n}?"),
    "instrument": ("Which instrument does {n} practise?", "What does {n} play?"),
    "mentor": ("Who trained {n}?", "From whom did {n} learn the craft?"),
}
TEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("When was {n} born?",),
    "city": ("Where did {n} grow up?",),
    "job": ("What is the profession of {n}?",),
    "company": ("Which company employs {n}?",),
    "instrument": ("Which instrument does {n} play?",),
    "mentor": ("Who was the teacher of {n}?",),
}
OOD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "year": ("Tell me the birth year of {n}.",),
    "city": ("Name the hometown of {n}.",),
    "job": ("Name the occupation of {n}.",),
    "company": ("Name the employer of {n}.",),
    "instrument": ("{n} is a player of which instrument?",),
}
MULTIHOP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": ("Where did the teacher of {n} grow up?",),
    "year": ("When was the teacher of {n} born?",),
}
# Pretraining may use these kinds of questions; OOD phrasings stay held out everywhere.
TRAINING_QUESTION_TEMPLATES: tuple[dict[str, tuple[str, ...]], ...] = (AUGMENT_TEMPLATES, TEST_TEMPLATES)


@dataclass(frozen=True)
class Person:
    """One fictional person: a unique name, a sector (its topic) and one value per attribute."""

    name: str
    sector: str
    facts: dict[str, str]


def _names(rng: random.Random, count: int, reserved: frozenset[str]) -> list[str]:
    names: list[str] = []
    seen = set(reserved)
    while len(names) < count:
        first = (rng.choice(_FIRST) + rng.choice(_MID)).capitalize()
        last = (rng.choice(_FIRST) + rng.choice(_MID) + rng.choice(_LAST)).capitalize()
        name = f"{first} {last}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _person(rng: random.Random, name: str, mentor: str) -> Person:
    sector = rng.choice(SECTORS)
    facts = {
        "year": str(rng.randint(1820, 1999)),
        "city": rng.choice(_CITIES),
        "job": rng.choice(_JOBS_BY_SECTOR[sector]),
        "company": rng.choice(_COMPANIES),
        "instrument": rng.choice(_INSTRUMENTS),
        "mentor": mentor,
    }
    return Person(name=name, sector=sector, facts=facts)


def make_people(seed: int, count: int, reserved: frozenset[str] = frozenset()) -> list[Person]:
    """Draw ``count`` people with unique names not in ``reserved``; mentors point within the group."""
    if count < 2:
        raise ValueError("a world needs at least 2 people (mentors point at other people)")
    rng = random.Random(seed)
    names = _names(rng, count, reserved)
    return [_person(rng, name, names[(i + 1 + rng.randrange(count - 1)) % count]) for i, name in enumerate(names)]


def fresh_pair(rng: random.Random) -> tuple[Person, Person]:
    """A person and their mentor, drawn on the fly (for reading practice that cannot be memorised)."""
    name, mentor_name = _names(rng, 2, frozenset())
    return _person(rng, name, mentor_name), _person(rng, mentor_name, name)


def state(person: Person, attribute: str, rng: random.Random) -> str:
    """One sentence stating ``person``'s ``attribute``, in a random paraphrase."""
    return rng.choice(PASSAGE_TEMPLATES[attribute]).format(n=person.name, v=person.facts[attribute])


def write_passage(person: Person, rng: random.Random, attributes: tuple[str, ...] = ATTRIBUTES) -> str:
    """One short passage: each fact as a randomly paraphrased sentence, in random order."""
    sentences = [state(person, a, rng) for a in attributes]
    rng.shuffle(sentences)
    return " ".join(sentences)


def ask(templates: dict[str, tuple[str, ...]], attribute: str, name: str, rng: random.Random) -> str:
    """A question about ``name``'s ``attribute`` in one of the given template families."""
    return rng.choice(templates[attribute]).format(n=name)
