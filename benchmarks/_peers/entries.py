"""Which of a benchmark's entries ``--entries`` keeps, one rule for every script that takes it."""

from __future__ import annotations


def entry_words(spec: str) -> list[str]:
    """The words of an ``--entries`` value: comma-separated, blanks around them dropped."""
    return [w.strip() for w in spec.split(",") if w.strip()]


def entry_rank(name: str, words: list[str]) -> int | None:
    """The index of the first word that keeps entry ``name``: a word keeps the entries whose name contains it,
    or with a leading ``=`` the one so named; None where no word does."""
    matches = (i for i, w in enumerate(words) if (name == w[1:] if w.startswith("=") else w in name))
    return next(matches, None)
