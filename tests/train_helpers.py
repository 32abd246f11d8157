"""Shared pieces of the training tests: the shipped LUDB shards and a short FGCLEP-Tiny run's flags."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUDB_TRAIN = str(ROOT / "shards" / "ludb" / "ludb-train-{000000..000002}.tar")
LUDB_TEST = str(ROOT / "shards" / "ludb" / "ludb-test-000000.tar")

# ECG zero-shot on the LUDB test split after every epoch, classes from the `Rhythms` column.
LUDB_ZEROSHOT = (
    "--ecg-zeroshot-data",
    LUDB_TEST,
    "--ecg-zeroshot-label-key",
    "Rhythms",
    "--zeroshot-frequency",
    "1",
)


def tiny_run_argv(logs: Path, name: str, samples: int, batch_size: int) -> list[str]:
    """open_clip_train flags of a short, seeded, fp32 CPU run of FGCLEP-Tiny on the LUDB training shards."""
    return [
        "--model", "FGCLEP-Tiny", "--train-data", LUDB_TRAIN, "--train-num-samples", str(samples),
        "--batch-size", str(batch_size), "--workers", "0", "--lr", "1e-3", "--warmup", "1",
        "--device", "cpu", "--precision", "fp32", "--seed", "0", "--logs", str(logs), "--name", name,
    ]  # fmt: skip
