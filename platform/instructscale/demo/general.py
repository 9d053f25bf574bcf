"""General instructions for the demo pool: explanations, advice, writing, comparisons, rewrites.

A narrowly tuned model forgets how to answer everything else; these rows are the general source a
mixture blends in. The instructions are composed here from templates and topic lists written for this
project (its licence, no third-party text), without answers: the teacher answers them in the
generate stage (``only_missing``), so the general rows carry the teacher's own style and length.
They avoid the general evaluation suite's prompts by construction (other templates, no factoid
questions), and the ``decontaminate`` filter with ``suites: [general]`` checks it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from instructscale.schema import encode_metadata

SOURCE = "demo/general"

_TOPICS = [
    "photosynthesis",
    "the water cycle",
    "compound interest",
    "a rainbow",
    "vaccines",
    "recycling",
    "the internet",
    "electric cars",
    "earthquakes",
    "the moon's phases",
    "gravity",
    "inflation",
    "a budget",
    "solar panels",
    "the immune system",
    "democracy",
    "a library",
    "coffee",
    "bread dough",
    "volcanoes",
    "tides",
    "sleep",
    "exercise",
    "a compass",
    "batteries",
    "clouds",
    "migration of birds",
    "the stock market",
    "a refrigerator",
    "friction",
    "memory",
    "a bicycle",
    "wind turbines",
    "fossils",
    "the seasons",
    "magnets",
    "a thermometer",
    "email",
    "music",
    "teamwork",
]
_ACTIVITIES = [
    "learning a new language",
    "saving money",
    "studying for an exam",
    "staying focused at work",
    "cooking on a budget",
    "starting to run",
    "writing a cover letter",
    "keeping a plant alive",
    "giving a presentation",
    "reducing stress",
    "travelling light",
    "making new friends",
    "organising a small desk",
    "learning to code",
    "reading more books",
    "drinking more water",
    "preparing for a job interview",
    "taking better photos",
    "working from home",
    "planning a trip",
]
_FORMS = [
    "a short poem",
    "a two-sentence story",
    "a friendly email",
    "a product description",
    "a haiku",
    "a thank-you note",
]
_SUBJECTS = [
    "a rainy morning",
    "a lost umbrella",
    "a new bakery",
    "an old lighthouse",
    "a first day at school",
    "a reusable water bottle",
    "a city park in autumn",
    "a cat that likes boxes",
    "a long train ride",
    "a garden in spring",
    "a noisy neighbour",
    "a pair of hiking boots",
]
_PAIRS = [
    ("cats", "dogs"),
    ("trains", "planes"),
    ("tea", "coffee"),
    ("books", "films"),
    ("summer", "winter"),
    ("renting", "buying a home"),
    ("email", "phone calls"),
    ("walking", "cycling"),
    ("cities", "villages"),
    ("paper notes", "digital notes"),
    ("lakes", "oceans"),
    ("solar power", "wind power"),
]
_SENTENCES = [
    "we gotta fix this before the boss sees it",
    "the meeting got moved to tomorrow cuz of the storm",
    "i dunno if the package came yet",
    "thanks a ton for the help yesterday",
    "the report is kinda late sorry",
    "can u send me the file asap",
    "the new app is super confusing",
    "lunch is on me today guys",
]

_TEMPLATES: list[tuple[str, Callable[[random.Random], tuple[str, str]]]] = [
    ("explain", lambda r: (f"Explain {r.choice(_TOPICS)} to a ten-year-old.", "")),
    ("explain", lambda r: (f"Describe how {r.choice(_TOPICS)} works in a short paragraph.", "")),
    ("why", lambda r: (f"Why does {r.choice(_TOPICS)} matter in everyday life?", "")),
    ("tips", lambda r: (f"Give three tips for {r.choice(_ACTIVITIES)}.", "")),
    ("advice", lambda r: (f"A friend asks for advice on {r.choice(_ACTIVITIES)}. What would you tell them?", "")),
    ("steps", lambda r: (f"List the first steps of {r.choice(_ACTIVITIES)}.", "")),
    ("write", lambda r: (f"Write {r.choice(_FORMS)} about {r.choice(_SUBJECTS)}.", "")),
    ("compare", lambda r: ("Compare {} and {}: give one advantage of each.".format(*r.choice(_PAIRS)), "")),
    ("rewrite", lambda r: ("Rewrite the sentence so that it sounds polite and formal.", r.choice(_SENTENCES))),
    ("summarise", lambda r: (f"Summarise what someone should know about {r.choice(_TOPICS)} in two sentences.", "")),
]


def _compose(rng: random.Random) -> tuple[str, str, str]:
    name, make = rng.choice(_TEMPLATES)
    return name, *make(rng)


def iter_general_rows(n_rows: int, seed: int) -> Iterator[dict]:
    """``n_rows`` distinct general instructions (fewer if the templates run out), without outputs."""
    rng = random.Random(f"{seed}:general")
    seen: set[tuple[str, str]] = set()
    for _attempt in range(n_rows * 20):
        if len(seen) >= n_rows:
            return
        template, instruction, inp = _compose(rng)
        if (instruction, inp) in seen:
            continue
        seen.add((instruction, inp))
        yield {
            "id": f"demo-general-{len(seen) - 1:06d}",
            "instruction": instruction,
            "input": inp,
            "output": "",
            "messages": None,
            "source": SOURCE,
            "metadata": encode_metadata({"task": "general", "template": template, "noise": None}),
        }
