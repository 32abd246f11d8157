"""A minimal real-data source for shard-writer tests: LUDB records read with wfdb, optionally slowed down."""

from __future__ import annotations

import time
from pathlib import Path

import wfdb

from fgclep_plugin.ecgdata.records import EcgRecord, RejectError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUDB = DATA / "ludb" / "data"


class LudbWfdb:
    """Reads ``LUDB/data/<id>`` with plain wfdb; ids that do not exist are rejected with the file named."""

    name = "ludb-test"
    LUDB_ROOT = DATA / "ludb"

    def __init__(self, ids: list[str], delay: float = 0.0):
        self.ids, self.delay = ids, delay

    def items(self) -> list[str]:
        return list(self.ids)

    def load(self, item: str) -> EcgRecord:
        if self.delay:
            time.sleep(self.delay)
        path = LUDB / item
        if not path.with_suffix(".hea").exists():
            raise RejectError("missing-file", f"{path}.hea does not exist")
        r = wfdb.rdrecord(str(path))
        return EcgRecord("ludb", item, r.p_signal.T, r.fs, r.sig_name, " ".join(r.comments), patient_id=item)
