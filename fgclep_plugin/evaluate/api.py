"""The evaluation API: one settings object, one call. ``fgclep eval`` and the demo both go through it.

    from fgclep_plugin.evaluate import EvalSettings, evaluate

    rows = evaluate(EvalSettings(checkpoints={"CLEP": "runs/demo/stage1/checkpoints/epoch_6.pt"},
                                 tasks=["synth-diagnosis", "ludb-rhythm"]))

Each row is one (checkpoint, task, protocol[, prompt set | label fraction]) result, as ``results.json`` holds
them (:mod:`.results` writes and formats them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..defaults import DEFAULT_MODEL, LUDB_DATA, MERL_DATA, SYNTH_DATA
from ..model.scoring import load_model
from .figures import make_figures
from .linear import linear_probe
from .tasks import ALL_TASKS, LUDB_TASKS, MERL_TASKS, get_task
from .zeroshot import PROMPT_SETS, cached_split, zero_shot_results

PROTOCOLS = ("zeroshot", "linear")


@dataclass
class EvalSettings:
    """What to evaluate and how. Defaults are those of ``fgclep eval``."""

    checkpoints: Mapping[str, str | None]  # label -> open_clip checkpoint (None: the random initial weights)
    tasks: Sequence[str]  # names from ``evaluate.tasks.ALL_TASKS``
    protocols: Sequence[str] = ("zeroshot",)  # any of PROTOCOLS
    model: str = DEFAULT_MODEL
    merl_data: str = MERL_DATA  # `fgclep eval build --out`
    ludb_data: str = LUDB_DATA
    synth_data: str = SYNTH_DATA  # generated on first use
    cache: str | None = None  # embedding cache folder (None: embeddings are not stored)
    bootstrap: int = 1000  # resamples of the test records for the 95 % interval (0: none)
    seed: int = 0  # bootstrap, label subsets, probe heads, and the weights of a checkpoint-less model
    batch_size: int = 64
    device: str = "auto"  # model.device.choose_device: cuda:LOCAL_RANK when CUDA is available, else cpu
    precision: str = "fp32"  # open_clip precision of every embedding
    workers: int = 2  # DataLoader processes decoding the shards (0: the main process)
    progress: bool = True
    prompt_sets: Sequence[str] | None = None  # None: templates, ens, and ckepe on MERL tasks
    fractions: Sequence[float] = (1.0, 10.0, 100.0)  # linear probe: % of the training labels
    repeats: int = 5  # linear probe: label subsets per fraction below 100 %
    probe_epochs: int = 100  # linear probe: head training epochs (the epoch is selected)
    merl_selection: bool = False  # linear probe: MERL's maximum-test-AUC selection (inflated; labelled)
    figures: str | None = None  # folder: t-SNE and similarity figures per checkpoint and task

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"protocols must be among {', '.join(PROTOCOLS)}, got {list(self.protocols)}")
        bad = [p for p in self.prompt_sets or () if p not in PROMPT_SETS]
        if bad:
            raise ValueError(f"unknown prompt set(s) {', '.join(bad)}; known: {', '.join(PROMPT_SETS)}")
        if not self.checkpoints:
            raise ValueError("no checkpoint to evaluate")

    def task_data(self, name: str) -> str:
        """The shard folder task ``name`` reads."""
        if name in MERL_TASKS:
            return self.merl_data
        return self.ludb_data if name in LUDB_TASKS else self.synth_data


def evaluate(settings: EvalSettings) -> list[dict[str, Any]]:
    """Rows of every (checkpoint, task, protocol) asked for, checkpoints in the order given."""
    s = settings
    tasks = [get_task(name, s.task_data(name)) for name in s.tasks]
    rows: list[dict[str, Any]] = []
    for label, checkpoint in s.checkpoints.items():
        torch.manual_seed(s.seed)  # a checkpoint-less model: the same random weights every run
        loaded = load_model(s.model, checkpoint, s.device, s.precision, s.workers)
        for task in tasks:
            base = {
                "model": s.model,
                "checkpoint": checkpoint,
                "checkpoint_label": label,
                "task": task.name,
                "device": str(loaded.device),  # the device selected, recorded
                "precision": loaded.precision,
            }
            emb = {"test": cached_split(loaded, task, "test", s.cache, s.batch_size, s.progress)}
            if "zeroshot" in s.protocols:
                for row in zero_shot_results(loaded, task, emb["test"], s.prompt_sets, s.bootstrap, s.seed):
                    rows.append({**base, **row})
            if "linear" in s.protocols:
                for split in ("train", "val"):
                    emb[split] = cached_split(loaded, task, split, s.cache, s.batch_size, s.progress)
                results = linear_probe(
                    emb["train"],
                    emb["val"],
                    emb["test"],
                    fractions=s.fractions,
                    repeats=s.repeats,
                    merl_selection=s.merl_selection,
                    epochs=s.probe_epochs,
                    bootstrap=s.bootstrap,
                    seed=s.seed,
                    progress=s.progress,
                )
                rows.extend({**base, **row} for row in results)
            if s.figures is not None:
                folder = Path(s.figures) / label.replace("/", "_") / task.name
                make_figures(loaded, task.urls("test"), folder, task.label_key, progress=s.progress)
    return rows
