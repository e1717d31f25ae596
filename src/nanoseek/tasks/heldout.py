"""The held-out set of the shipped model: heldout.jsonl, written once and kept in the repository.

Each line is a prompt with the frame it was written from and its instance: a skill problem
({"skill", "frame", "instance", "prompt"}, with "bucket": "3-digit ×" for the products of a
three-digit number) or a message outside the skills ({"skill": "out_of_scope", "prompt"}). Its
frames are not phrasing.py's, its instances are never drawn by the training generators (chats.py
skips them, and the letters skill never trains on its words), and its messages outside the skills
are not persona.py's: so a model's scores on it measure what it generalised to, not what it saw.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from nanoseek.tasks.skills import key

HELDOUT_FILE = Path(__file__).with_name("heldout.jsonl")
BUCKET = "3-digit ×"


def normal(text: str) -> str:
    """A message with case, punctuation and spacing ignored: how two messages count as one."""
    return " ".join(re.findall(r"\w+", text.lower()))


@cache
def load() -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in HELDOUT_FILE.read_text().splitlines() if line)


@cache
def held_out_keys() -> frozenset[str]:
    """What training never generates: every held-out instance's key, every held-out message outside
    the skills (as `normal` writes it), and the letters skill's words (as "word W")."""
    keys = set()
    for row in load():
        if row["skill"] == "out_of_scope":
            keys.add(normal(row["prompt"]))
        else:
            keys.add(key(row["skill"], row["instance"]))
            if row["skill"] == "letters":
                keys.add(f"word {row['instance']['word'].lower()}")
    return frozenset(keys)
