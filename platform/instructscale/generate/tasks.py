"""Reading new tasks out of a teacher's answer, and Self-Instruct's checks on each one.

Teachers answer "write new tasks" with list numbering, labels ("Task 3:"), preambles ("Sure, here
are three tasks:") and instance lines ("Input: ..."); :func:`parse_tasks` keeps the tasks alone.
:func:`task_problem` is the paper's filter of a candidate instruction (Wang et al. 2023, sec. 2.3).
"""

from __future__ import annotations

import re
import string

MARKER = re.compile(r"^\s*(?:\(?\d+\s*[.):]|[-*\u2022]|#+)\s+")
INLINE_NUMBER = re.compile(r"(?<=[\w\"'.!?])[,;]?\s+\(?(\d{1,2})[.)]\s+(?=[A-Z])")  # "..., 2. Find ..."
FIRST_NUMBER = re.compile(r"\s*\(?(\d{1,2})[.)]\s")
LABEL = re.compile(r"^\s*(?:new\s+)?(?:task|instruction|prompt|question)(?:\s*#?\d+)?\s*[:.\-]\s*", re.I)
INSTANCE = re.compile(r"^\s*(?:input|output|answer|response|example|solution|class(?:ification)?)\s*\d*\s*:", re.I)
PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|here(?:'s| is| are)|below (?:is|are)|the following)\b",
    re.I,
)
DEFAULT_BLACKLIST = (
    "image",
    "images",
    "picture",
    "pictures",
    "graph",
    "graphs",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)


def parse_tasks(text: str) -> list[str]:
    """The distinct tasks in a teacher's answer, one per line (a line numbered inline, "1. A, 2. B",
    is split), without numbering, labels, bold markers or quotes; preambles and instance lines are
    dropped."""
    tasks: list[str] = []
    for raw in text.splitlines():
        for part in _split_inline(raw.replace("**", "")):
            line = _strip_markers(part.lstrip(",; "))
            if line and not INSTANCE.match(line) and not _is_preamble(line) and line not in tasks:
                tasks.append(line)
    return tasks


def _split_inline(line: str) -> list[str]:
    """A line cut where the next number of its list follows inline ("A, 2. B, 3. C"); numbers
    out of sequence ("Compute 3 + 4. Then ...") are left alone."""
    first = FIRST_NUMBER.match(line)
    expect, cuts = (int(first.group(1)) + 1 if first else 2), []
    for m in INLINE_NUMBER.finditer(line):
        if int(m.group(1)) != expect:
            break
        cuts.append(m.start())
        expect += 1
    return [line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)])]


def _strip_markers(line: str) -> str:
    """A line without its leading numbering, bullets and labels (repeated: "- 1. Task: ...")."""
    while True:
        stripped = LABEL.sub("", MARKER.sub("", line.strip())).strip().strip('"').strip().rstrip(",;").strip()
        if stripped == line:
            return line
        line = stripped


def _is_preamble(line: str) -> bool:
    """'Sure!', 'Here are three new tasks:', 'The following tasks are different:'."""
    return bool(PREAMBLE.match(line)) and (line.endswith((":", "!")) or len(line.split()) <= 3)


def task_problem(
    instruction: str, *, min_words: int = 4, max_words: int = 150, blacklist: tuple[str, ...] = DEFAULT_BLACKLIST
) -> str | None:
    """Why Self-Instruct would drop this instruction (a reject reason), or None to keep it."""
    words = instruction.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    if instruction[0] in string.punctuation:
        return "starts_with_punctuation"
    if not instruction[0].isascii():
        return "non_ascii_start"
    lowered = instruction.lower()
    if any(re.search(rf"\b{re.escape(word)}\b", lowered) for word in blacklist):
        return "blacklisted_keyword"
    return None


def parse_instance(text: str, output_first: bool) -> tuple[str, str] | None:
    """``(input, output)`` of an instance the teacher wrote as ``Input: ... Output: ...`` (or, for
    a classification task, ``Class label: ... Input: ...``); an input of "None", or none at all for
    a task that is not a classification, is empty. None when the output (label) is missing."""
    label = r"class(?:\s+label)?" if output_first else r"output"
    text = text.replace("**", "")
    parts = {}
    for key, pattern, other in (("input", r"input", label), ("output", label, r"input")):
        found = re.search(rf"(?:^|\n)\s*{pattern}\s*:\s*(.*?)(?=\n\s*(?:{other})\s*:|\Z)", text, re.I | re.S)
        if found is None and not (key == "input" and not output_first):
            return None
        parts[key] = found.group(1).strip() if found else ""
    if not parts["output"]:
        return None
    if parts["input"].strip(".").lower() in ("none", "n/a", "no input", "<noinput>", "-"):
        parts["input"] = ""
    return parts["input"], parts["output"]


# fmt: off
STOP_WORDS = frozenset((  # common English stop words
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did",
    "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have",
    "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into",
    "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she",
    "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then",
    "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
    "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would",
    "you", "your", "yours", "yourself", "yourselves",
))
# fmt: on


def is_only_stop_words(text: str) -> bool:
    """Whether a text holds nothing but punctuation and common English stop words."""
    return all(word in STOP_WORDS for word in re.findall(r"[a-z0-9']+", text.lower()))
