"""Report and feature-string normalisation: the units stage 2 counts, caches and compares.

A report's normalised form is the unit of "one prompt per unique report"; :func:`report_key` is its cache key.
Feature strings from any backend pass through :func:`normalise_feature` so the same feature is one string.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterator

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
    t = "".join(c for c in str(text) if c.isprintable() or c.isspace())  # no control characters
    t = _SPACE.sub(" ", t).strip()
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


# --- the prompt and the parsing of answers -------------------------------------------------------------------

PROMPT_VERSION = "fgclep-v1"
"""Part of every cache entry's identity: change it whenever :func:`build_messages` changes what is asked."""

QUESTION = "What waveform features are most likely to be present in ECGs with these symptoms?"
SYSTEM = "You are a cardiologist reading ECG reports. You answer only with a JSON list of strings."
MAX_FEATURES = 10


def build_messages(report: str, max_features: int = MAX_FEATURES) -> list[dict[str, str]]:
    """The paper's question about one (normalised) report, as chat messages."""
    user = (
        f"{QUESTION}\n\nReport: {report}\n\n"
        f"Answer with a JSON list of at most {max_features} short waveform feature strings "
        '(for example ["prolonged pr interval", "st elevation in v1-v3"]) and nothing else.'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def answer_schema(max_features: int = MAX_FEATURES, max_chars: int = MAX_FEATURE_CHARS) -> dict:
    """JSON schema of an answer: a list of at most ``max_features`` strings of at most ``max_chars``."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
        "maxItems": max_features,
    }


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def _literal_values(text: str) -> Iterator[object]:
    """JSON / Python-literal values starting at a '[' or '{' in ``text``, in order (json, then ast only)."""
    decoder = json.JSONDecoder(
        strict=False
    )  # control characters inside strings: normalise_feature drops them
    starts = [i for i, c in enumerate(text) if c in "[{"][:20]
    for i in starts:
        try:
            yield decoder.raw_decode(text, i)[0]
        except (ValueError, RecursionError):  # bad JSON, numbers over Python's digit limit, deep nesting
            pass
    for i in starts:  # Python literals: ['a', 'b'] with single quotes; try the spans ending at each closer
        closer = "]" if text[i] == "[" else "}"
        ends = [j for j in range(len(text) - 1, i, -1) if text[j] == closer][:20]
        for j in ends:
            try:
                yield ast.literal_eval(text[i : j + 1])
                break
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                continue


def _as_list(value: object) -> list | None:
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else None
    return list(value) if isinstance(value, (list, tuple)) else None


def parse_answer(raw: str | None, max_features: int = 2 * MAX_FEATURES) -> tuple[list[str], str]:
    """Features in an LLM answer and the status: ``ok``, ``empty`` (no answer or an empty list) or ``unparsable``.

    Accepts a JSON or Python list of strings, inside code fences or followed by prose, or an object holding
    one such list (``{"features": [...]}``); the first list holding a feature wins. Items are normalised
    (:func:`normalise_feature`); duplicates and non-string items are dropped. Untrusted text is parsed with
    ``json`` / ``ast.literal_eval`` only.
    """
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        return [], "empty"
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    found_list = False
    for part in [*fenced, text]:
        for value in _literal_values(part):
            items = _as_list(value)
            if items is None:
                continue
            found_list = True
            features: list[str] = []
            for item in items:
                f = normalise_feature(item) if isinstance(item, str) else None
                if f is not None and f not in features:
                    features.append(f)
            if features:
                return features[:max_features], "ok"
    return [], ("empty" if found_list else "unparsable")
