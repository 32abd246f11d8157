"""SNOMED-CT code -> diagnosis name, from a small table packaged with the plugin.

The packaged ``snomed_names.csv`` is derived from the PhysioNet/CinC Challenge 2021 label maps
(``dx_mapping_scored.csv`` / ``dx_mapping_unscored.csv``, BSD-2-Clause) and the Chapman-Shaoxing/Ningbo
``ConditionNames_SNOMED-CT.csv`` (CC BY 4.0) by :func:`build_table`; see ``README.md`` next to it. Rebuild with::

    python -m fgclep_plugin.ecgdata.sources.snomed LABEL_MAPS_DIR [OUT_CSV]

The Challenge's descriptive name wins where both tables know a code; the Chapman acronyms are kept in their own
column because they differ from the Challenge's (in Chapman/CSN ``AF`` is atrial *flutter*, ``AFIB`` fibrillation).
"""

from __future__ import annotations

import csv
import sys
from functools import lru_cache
from pathlib import Path

PACKAGED_TABLE = Path(__file__).with_name("snomed_names.csv")
COLUMNS = ("code", "name", "challenge_abbreviation", "chapman_acronyms", "origin")

_CHALLENGE_FILES = ("challenge2021_dx_mapping_scored.csv", "challenge2021_dx_mapping_unscored.csv")
_CHAPMAN_FILES = ("chapman_ecg_arrhythmia_ConditionNames_SNOMED-CT.csv", "csn_ConditionNames_SNOMED-CT.csv")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # the Chapman tables start with a BOM
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def build_table(label_maps: str | Path) -> list[dict[str, str]]:
    """Merge the Challenge 2021 and Chapman label maps in ``label_maps`` into rows of :data:`COLUMNS`."""
    label_maps = Path(label_maps)
    table: dict[str, dict[str, str]] = {}
    for fname in _CHALLENGE_FILES:
        for row in _rows(label_maps / fname):
            code = row["SNOMEDCTCode"]
            table.setdefault(
                code,
                {
                    "code": code,
                    "name": row["Dx"],
                    "challenge_abbreviation": row["Abbreviation"],
                    "chapman_acronyms": "",
                    "origin": "challenge2021",
                },
            )
    acronyms: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for fname in _CHAPMAN_FILES:
        path = label_maps / fname
        if not path.exists():
            continue
        for row in _rows(path):
            code = row["Snomed_CT"]
            if row["AcronymName"] not in acronyms.setdefault(code, []):
                acronyms[code].append(row["AcronymName"])
            names.setdefault(code, row["FullName"].lower())
    for code, acr in acronyms.items():
        entry = table.setdefault(
            code,
            {
                "code": code,
                "name": names[code],
                "challenge_abbreviation": "",
                "chapman_acronyms": "",
                "origin": "chapman",
            },
        )
        entry["chapman_acronyms"] = " ".join(acr)
    return sorted(table.values(), key=lambda r: int(r["code"]) if r["code"].isdigit() else 0)


def write_table(rows: list[dict[str, str]], out: str | Path) -> None:
    """Write rows from :func:`build_table` as CSV."""
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@lru_cache(maxsize=4)
def load_names(path: str | None = None) -> dict[str, str]:
    """SNOMED code -> name from ``path`` (default: the packaged table)."""
    with open(path or PACKAGED_TABLE, newline="", encoding="utf-8") as f:
        return {row["code"]: row["name"] for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> None:
    """``python -m fgclep_plugin.ecgdata.sources.snomed LABEL_MAPS_DIR [OUT_CSV]``"""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(main.__doc__)
    out = argv[1] if len(argv) > 1 else PACKAGED_TABLE
    rows = build_table(argv[0])
    write_table(rows, out)
    print(f"wrote {len(rows)} codes to {out}")


if __name__ == "__main__":
    main()
