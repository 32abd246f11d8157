"""Reading an input shard of ``fgclep augment`` sample by sample, with its rejects, and the rewritten shard's
writer source and report text: what the run needs without torch (its parser and summary are built from here
too, start-up time)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..ecgdata.reader import decode_sample, iter_raw
from ..ecgdata.records import CanonicalSample, RejectError


def augmented_text(report: str, kept: Sequence[str]) -> str:
    """The original report followed by the kept features as one sentence."""
    report = " ".join(str(report).split())
    if not kept:
        return report
    sep = "" if not report or report.endswith((".", "!", "?")) else "."
    return f"{report}{sep} {', '.join(kept)}.".strip()


def read_shard(url: str) -> Iterator[tuple[str, dict[str, Any] | RejectError]]:
    """(key, decoded sample) per sample of a shard, or (key, RejectError) for a sample that cannot be decoded;
    a shard unreadable from some point on ends with one ``unreadable-shard-rest`` reject; a second sample under a
    key already seen is a ``duplicate-key`` reject (listed as ``KEY#N``, its position in the shard)."""
    n, seen = 0, set()
    try:
        for raw in iter_raw(url):
            n += 1
            key = str(raw.get("__key__", f"#{n}"))
            if key in seen:
                yield (
                    f"{key}#{n}",
                    RejectError(
                        "duplicate-key", f"{url}: sample {n} repeats key {key}; the first one is kept"
                    ),
                )
                continue
            seen.add(key)
            try:
                yield key, decode_sample(raw)
            except Exception as e:  # noqa: BLE001  any member problem: this sample only
                yield key, RejectError("corrupt-sample", f"{url}: sample {key}: {type(e).__name__}: {e}")
    except (OSError, ValueError) as e:
        yield (
            f"{Path(url).name}#after-{n}",
            RejectError("unreadable-shard-rest", f"{url}: unreadable after {n} samples: {e}"),
        )


class PreparedShard:
    """Shard-writer source of one rewritten shard: ``load`` returns the prepared ``CanonicalSample`` or raises
    the sample's ``RejectError``."""

    name = "augment"

    def __init__(self, entries: list[tuple[str, CanonicalSample | RejectError]]):
        self.entries = dict(entries)
        self.order = [k for k, _ in entries]

    def items(self) -> list[str]:
        """The input keys, in input order."""
        return list(self.order)

    def load(self, item: str) -> CanonicalSample:
        """The rewritten sample (or its reject)."""
        v = self.entries[item]
        if isinstance(v, RejectError):
            raise v
        return v
