"""Report and feature-string normalisation: the units stage 2 counts, caches and compares.

A report's normalised form is the unit of "one prompt per unique report"; :func:`report_key` is its cache key.
Feature strings from any backend pass through :func:`normalise_feature` so the same feature is one string.
"""

from __future__ import annotations

import hashlib
import re

MAX_FEATURE_CHARS = 80

_SPACE = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[\s.,;:!?]+$")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
# Leading bullets, numbering ("1.", "2)", "(3)", "a)"), dashes and stars.
_BULLET = re.compile(
    r"^(?:[-*\u2022\u2013\u2014>#]+|\(?\d{1,3}[.)](?=\s|$)|\(?[a-z]\)(?=\s|$)|\s)+\s*", re.IGNORECASE
)
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"


def normalise_report(text: str) -> str:
    """Lower-case, whitespace collapsed, no space before punctuation, trailing punctuation replaced by one '.'.

    ``"Sinus rhythm.  Normal ECG"`` and ``"sinus rhythm. normal ecg."`` give the same string; an empty
    report gives ``""``.
    """
    t = _SPACE.sub(" ", str(text)).strip().lower()
    t = _SPACE_BEFORE_PUNCT.sub(r"\1", t)
    t = _TRAILING_PUNCT.sub("", t)
    return f"{t}." if t else ""


def report_key(text: str) -> str:
    """sha256 hex digest of the normalised report: the cache key of a report."""
    return hashlib.sha256(normalise_report(text).encode("utf-8")).hexdigest()


def normalise_feature(text: str) -> str | None:
    """One feature string in canonical form, or None if nothing is left.

    Strips bullets, numbering and quotes, lower-cases, collapses whitespace, drops trailing periods and caps
    the length at :data:`MAX_FEATURE_CHARS` (cut at a word boundary where there is one).
    """
    t = _SPACE.sub(" ", str(text)).strip()
    prev = None
    while t != prev:  # bullets inside quotes and quotes inside bullets: strip until stable
        prev = t
        t = _BULLET.sub("", t).strip().strip(_QUOTES).strip()
    t = t.lower()
    t = _TRAILING_PUNCT.sub("", t)
    if len(t) > MAX_FEATURE_CHARS:
        cut = t[: MAX_FEATURE_CHARS + 1].rsplit(" ", 1)[0]
        t = (cut if len(cut) >= MAX_FEATURE_CHARS // 2 else t[:MAX_FEATURE_CHARS]).rstrip(" ,;:-")
    return t or None
