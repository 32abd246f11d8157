"""The ECG data layer: the canonical ECG (``ecg``), records and rejects (``records``), one reader per dataset
(``sources``), the atomic, resumable shard writer (``shards``), the shard reader (``reader``), ECG-paper plots
(``plot``) and ``fgclep info`` / ``fgclep show`` (``inspect``)."""
