"""Class labels of a shard sample: the forms converters store in ``meta["labels"][key]``."""

from __future__ import annotations

from typing import Any


def labels_from_meta(meta: dict[str, Any], key: str) -> list[str]:
    """Class names of one sample from its shard metadata ``meta["labels"][key]``.

    A list of names gives those names; a single string gives one; a ``{name: flag}`` dict gives the names whose
    flag is true (``1``, ``True``; ``0``, ``False``, ``None``, ``""`` are absent); missing or empty gives no
    class. Anything else raises ``ValueError`` naming the record. (Converters store present classes in one of
    these forms: PTB-XL's ``scp_codes``, where likelihood 0.0 still means present, is stored as a list.)
    """
    value = (meta.get("labels") or {}).get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, dict):
        return [str(k) for k, v in value.items() if v]
    raise ValueError(
        f"record {meta.get('record_id', '?')}: labels[{key!r}] is {type(value).__name__}, "
        "expected a class name, a list of names or a {name: flag} dict"
    )
