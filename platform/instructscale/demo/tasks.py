"""Verifiable task families for the demo pool: every row has an exact answer and a difficulty 1-5.

Each generator takes a seeded ``random.Random`` and a difficulty and returns
``(instruction, input, answer)``; answers are checked with :func:`instructscale.answers.check_answer`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

MAX_DIFFICULTY = 5
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "pencil",
    "window",
    "bridge",
    "forest",
    "candle",
    "mirror",
    "rocket",
    "silver",
    "yellow",
    "market",
    "planet",
    "summer",
    "winter",
    "orange",
    "guitar",
    "basket",
    "castle",
    "dragon",
    "engine",
    "flower",
    "hammer",
    "island",
    "jacket",
    "kitten",
    "ladder",
    "meadow",
    "needle",
    "ocean",
    "puzzle",
    "rabbit",
    "saddle",
    "tunnel",
    "violin",
    "wallet",
    "zebra",
    "anchor",
    "bottle",
    "copper",
    "desert",
    "feather",
    "harbor",
    "lantern",
    "marble",
]


def _arithmetic(rng: random.Random, d: int) -> tuple[str, str, str]:
    if d == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        expr, val = f"{a} + {b}", a + b
    elif d == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, val = f"{a} + {b}", a + b
    elif d == 3:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, val = f"{a} - {b}", a - b
    elif d == 4:
        a, b, c = (rng.randint(100, 999) for _ in range(3))
        expr, val = f"{a} + {b} - {c}", a + b - c
    else:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        expr, val = f"{a} * {b}", a * b
    template = rng.choice(["Compute {e}.", "What is {e}?", "Calculate {e}.", "Evaluate {e}."])
    return template.format(e=expr), "", str(val)


def _string(rng: random.Random, d: int) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    if d == 1:
        return "Convert the word to upper case.", word, word.upper()
    if d == 2:
        return "Reverse the letters of the word.", word, word[::-1]
    if d == 3:
        return "Count the vowels in the word.", word, str(sum(ch in "aeiou" for ch in word))
    words = rng.sample(WORDS, 3 if d == 4 else 5)
    text = " ".join(words)
    if d == 4:
        return "Reverse the order of the words.", text, " ".join(reversed(words))
    return "Write the first letter of each word.", text, "".join(w[0] for w in words)


def _sorting(rng: random.Random, d: int) -> tuple[str, str, str]:
    n = d + 2
    lo = -50 if d >= 4 else 0
    nums = [rng.randint(lo, 99) for _ in range(n)]
    descending = d == 5
    order = "descending" if descending else "ascending"
    instruction = rng.choice([f"Sort the numbers in {order} order.", f"Arrange these numbers in {order} order."])
    return instruction, ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums, reverse=descending)))


_UNITS = [  # (difficulty, from, to, factor)
    (1, "km", "m", 1000),
    (2, "m", "cm", 100),
    (3, "kg", "g", 1000),
    (4, "h", "min", 60),
    (5, "day", "s", 86400),
]


def _units(rng: random.Random, d: int) -> tuple[str, str, str]:
    _, src, dst, factor = _UNITS[d - 1]
    value = rng.randint(1, 9 * d)
    template = rng.choice(["Convert {v} {s} to {t}.", "How many {t} are in {v} {s}?"])
    return template.format(v=value, s=src, t=dst), "", f"{value * factor} {dst}"


TASKS: dict[str, Callable[[random.Random, int], tuple[str, str, str]]] = {
    "arithmetic": _arithmetic,
    "string": _string,
    "sorting": _sorting,
    "units": _units,
}
