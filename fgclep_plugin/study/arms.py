"""The study's vocabulary, shared by the grid and the report: arms, run labels, measured tasks.

Arms (stage-3 training text; all from the same stage-1 checkpoint, same records, same recipe):

* ``original``: the original reports (the control every arm is compared with, seed by seed);
* ``validated-RULE``: the kept candidates of ``fgclep augment --rule RULE`` (FG-CLEP);
* ``unvalidated``: every candidate (``--rule cosine --cosine-threshold -1``);
* ``perfect-validation``: the candidates whose feature is present (``--rule oracle``);
* ``perfect-features``: every present feature the report omits (``--rule oracle --candidates truth``);
* ``wrong-features``: the perfect-validation lists moved to other ECGs (``--rule oracle --move-kept 0``);
* ``stage1``: no stage 3 at all.
"""

from __future__ import annotations

import re

from ..augment.rules import RULES

CONTROL = "original"
STAGE2_ARMS = ("unvalidated", "perfect-validation", "perfect-features", "wrong-features")
TASKS = ("synth-feature", "synth-diagnosis")
PROMPT_SETS = ("templates", "ens")
_LABEL = re.compile(r"^(?P<arm>[^@]+?)(?:@s(?P<seed>\d+))?$")


def arm_flags(arm: str) -> list[str]:
    """``fgclep augment`` flags writing the training text of a stage-2 arm."""
    if arm.startswith("validated-"):
        return ["--rule", arm.removeprefix("validated-")]
    flags = {
        "unvalidated": ["--rule", "cosine", "--cosine-threshold", "-1"],  # cosine > -1: every candidate
        "perfect-validation": ["--rule", "oracle"],
        "perfect-features": ["--rule", "oracle", "--candidates", "truth"],
        "wrong-features": ["--rule", "oracle", "--move-kept", "0"],
    }
    if arm not in flags:
        raise ValueError(f"unknown arm {arm!r}")
    return flags[arm]


def stage2_arms(rules: list[str], only: list[str] | None = None) -> list[str]:
    """The stage-2 arms: one validated arm per rule, then :data:`STAGE2_ARMS`; ``only`` keeps those named.
    An unknown rule is refused here, before any step runs."""
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise ValueError(f"unknown rule(s) {', '.join(bad)}; the rules are {', '.join(RULES)}")
    arms = [f"validated-{r}" for r in rules] + list(STAGE2_ARMS)
    if only is None:
        return arms
    unknown = sorted(set(only) - set(arms))
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(arms)}")
    return [a for a in arms if a in only]


def run_label(arm: str, injection: str | None, seed: int | None) -> str:
    """``perfect-features+caption@s1``; ``original@s0``; ``stage1``."""
    label = arm if injection in (None, "append") else f"{arm}+{injection}"
    return label if seed is None else f"{label}@s{seed}"


def parse_label(label: str) -> tuple[str, int | None]:
    """``perfect-features+caption@s1`` -> (``perfect-features+caption``, 1); ``stage1`` -> (``stage1``, None)."""
    m = _LABEL.match(label)
    if m is None:
        raise ValueError(f"not a run label: {label!r}")
    return m["arm"], None if m["seed"] is None else int(m["seed"])
