"""The study's grid: corpus and stage 1 per mention rate, stage 2 per arm, stage 3 per (arm, injection, seed).

Every step is a public command run in this process (``fgclep synth``, ``python -m fgclep_plugin.train``,
``fgclep augment``; each is written to ``OUT/commands.log`` as it would be typed) or the evaluation API, and
each records a settings manifest in ``OUT/.study/``: a re-run skips the steps whose manifest matches and whose
outputs exist, so a killed study resumes where it stopped. A stage-3 run is one step with its scoring: the
zero-shot scores of every test record are kept (``scores/LABEL.npz``) and the checkpoint is deleted unless
``--keep-checkpoints`` (they are about 0.3 GB each).

The arms are listed in :mod:`.arms`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import trainargs
from ..augment import rewrite as augment_cli
from ..ecgdata import manifest
from ..ecgdata.atomic import atomic_write_bytes, atomic_write_json
from ..ecgdata.reader import iter_samples
from ..evaluate.tasks import get_task
from ..evaluate.zeroshot import embed_shards, prompt_scores, task_split
from ..model.scoring import load_model
from ..synth import cli as synth_cli
from ..train import main as train_main
from ..trainargs import train_argv
from .arms import PROMPT_SETS, TASKS, arm_flags, run_label, stage2_arms


class Steps:
    """Runs named steps in ``out``, skipping those whose manifest (``.study/NAME.json``) matches and whose
    outputs exist."""

    def __init__(self, out: Path, log: Callable[[str], None] = print):
        self.state = out / ".study"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log, self.seconds, self.ran = log, {}, []

    def run(self, name: str, settings: dict[str, Any], outputs: list[Path], fn: Callable[[], Any]) -> None:
        path = self.state / f"{name.replace('/', '_')}.json"
        old = manifest.read(path)
        new = manifest.canonical({"settings": settings})
        if old is not None and old.get("settings") == new["settings"] and all(o.exists() for o in outputs):
            return
        if old is not None:
            changed = manifest.changed_keys(old.get("settings"), new["settings"])
            self.log(f"[{name}] settings changed ({', '.join(changed) or 'outputs missing'}): re-running")
        path.unlink(missing_ok=True)
        self.log(f"[{name}] running ...")
        t0 = time.time()
        fn()
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise RuntimeError(f"study step {name} finished without {', '.join(missing)}")
        self.seconds[name] = round(time.time() - t0, 1)
        self.ran.append(name)
        atomic_write_json(path, {**new, "seconds": self.seconds[name]})
        self.log(f"[{name}] done in {self.seconds[name]:.0f} s")


class Commands:
    """The public commands, run in this process and written to ``commands.log``."""

    def __init__(self, out: Path):
        self.logfile = out / "commands.log"

    def _note(self, words: list[str]) -> None:
        with open(self.logfile, "a") as f:
            f.write(shlex.join(words) + "\n")

    def fgclep(self, argv: list[str]) -> None:
        """``fgclep synth`` / ``fgclep augment`` through their own parsers (the study sits below the top-level
        CLI's layer, so it builds the two subcommands it uses)."""
        self._note(["fgclep", *argv])
        args = _command_parser().parse_args(argv)
        rc = args.func(args)
        if rc:
            raise RuntimeError(f"fgclep {shlex.join(argv)} exited with status {rc}")

    def train(self, argv: list[str], run_dir: Path) -> None:
        self._note(["python", "-m", "fgclep_plugin.train", *argv])
        if run_dir.exists():  # a run killed part-way: open_clip refuses an existing experiment name
            shutil.rmtree(run_dir)
        rc = train_main(argv)
        if rc:
            raise RuntimeError(f"python -m fgclep_plugin.train {shlex.join(argv)} exited with status {rc}")


def _command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgclep")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (synth_cli, augment_cli):
        module.add_cli(sub)
    return p


def first_shards(pattern: str, shards: int) -> str:
    """The first ``shards`` training shards of a ``...-{000000..00000N}.tar`` pattern."""
    prefix = pattern[: pattern.index("{")]
    return f"{prefix}{{000000..{shards - 1:06d}}}.tar"


def corpus_urls(root: Path) -> dict[str, str]:
    """Shard patterns of a corpus written by ``fgclep synth --out ROOT`` (from its folders)."""
    out = {}
    for split in ("train", "val", "test"):
        tars = sorted((root / split).glob(f"synth-{split}-*.tar"))
        if not tars:
            raise FileNotFoundError(f"no {split} shards in {root / split}")
        out[split] = str(root / split / f"synth-{split}-{{000000..{len(tars) - 1:06d}}}.tar")
    return out


def corpus_mention_rate(root: Path) -> float:
    """The mention rate a corpus was generated with (its first test sample's json)."""
    first = next(iter_samples(corpus_urls(root)["test"]))
    return float(first["meta"]["synth"]["p_mention"])


def score_checkpoint(model: str, checkpoint: str, root: Path, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Zero-shot scores ``[N, C]`` of every test record for every task and prompt set, targets and keys."""
    loaded = load_model(model, checkpoint)
    tasks = [get_task(t, str(root)) for t in TASKS]
    shards = embed_shards(loaded, tasks[0].urls("test"), batch_size, progress=False)
    out: dict[str, np.ndarray] = {}
    for task in tasks:
        split = task_split(shards, task)
        out[f"{task.name}/targets"] = split.targets.astype(np.int8)
        out[f"{task.name}/keys"] = np.array(split.keys)
        out[f"{task.name}/classes"] = np.array(task.class_names)
        for ps in PROMPT_SETS:
            out[f"{task.name}/{ps}"] = prompt_scores(loaded, task, split.embeddings, ps).astype(np.float32)
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def stage3_over(args: argparse.Namespace, ck1: Path, injection: str) -> dict[str, Any]:
    """The study's stage-3 run from ``ck1`` with ``injection``, as ``--stage3-init`` says
    (:func:`fgclep_plugin.trainargs.stage3_over`)."""
    return trainargs.stage3_over(args, ck1, injection, args.stage3_init)


def rate_dir(out: Path, rate: float) -> Path:
    return out / f"p{rate:g}"


def run_rate(args: argparse.Namespace, rate: float, steps: Steps, cmd: Commands) -> dict[str, Any]:
    """Every step of one mention rate; returns its plan (paths of the scores and stage-2 summaries)."""
    out = rate_dir(Path(args.out), rate)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"p{rate:g}"
    # corpus
    root = Path(args.corpus[rate]) if rate in args.corpus else out / "corpus"
    if rate in args.corpus:
        found = corpus_mention_rate(root)
        if abs(found - rate) > 1e-9:
            raise ValueError(
                f"--corpus {rate:g}={root}: its samples were generated with mention rate {found:g}"
            )
    else:
        sizes = {"train": args.train, "val": args.val, "test": args.test}
        steps.run(
            f"{tag}/corpus",
            {"rate": rate, **sizes},
            [root / "test"],
            lambda: cmd.fgclep(
                [
                    "synth",
                    "--out",
                    str(root),
                    "--p-mention",
                    f"{rate:g}",
                    "--train",
                    str(args.train),
                    "--val",
                    str(args.val),
                    "--test",
                    str(args.test),
                    "--workers",
                    str(args.gen_workers),
                    "--quiet",
                ]
            ),
        )
    urls = corpus_urls(root)
    # stage 1
    if rate in args.stage1:
        ck1 = Path(args.stage1[rate])
    else:
        ck1 = out / "stage1" / "checkpoints" / f"epoch_{args.epochs}.pt"
        a1 = train_argv(args, urls["train"], out, "stage1", 0)
        steps.run(f"{tag}/stage1", {"argv": a1}, [ck1], lambda: cmd.train(a1, out / "stage1"))
    ck1_id = manifest.checkpoint_id(ck1)
    train3 = first_shards(urls["train"], args.stage3_shards)
    plan: dict[str, Any] = {"rate": rate, "root": str(root), "stage1": str(ck1), "runs": {}, "stage2": {}}
    # stage 2: one shard set per arm
    data = {"original": train3}
    for arm in stage2_arms(args.rules, args.arms):
        folder = out / f"stage2-{arm}"
        summary = folder / "summary.json"
        argv = [
            "augment",
            "--data",
            train3,
            "--out",
            str(folder / "aug-%06d.tar"),
            "--cache",
            str(out / "candidates"),
            "--checkpoint",
            str(ck1),
            "--model",
            args.model,
            "--calib-size",
            str(args.calib_size),
            "--summary-json",
            str(summary),
            "--quiet",
            *arm_flags(arm),
        ]

        def augment(argv=argv, folder=folder) -> None:
            if folder.exists():
                shutil.rmtree(folder)  # other settings: the command refuses to mix; start clean
            cmd.fgclep(argv)

        steps.run(f"{tag}/stage2-{arm}", {"argv": argv, "stage1": ck1_id}, [summary], augment)
        plan["stage2"][arm] = str(summary)
        data[arm] = json.loads(summary.read_text())["urls"]
    # stage 1 scores, then stage 3 + scores per run
    scores = out / "scores"

    def score(ck: Path, path: Path) -> None:
        save_npz(path, score_checkpoint(args.model, str(ck), root, args.eval_batch_size))

    p1 = scores / "stage1.npz"
    steps.run(f"{tag}/score-stage1", {"stage1": ck1_id, "model": args.model}, [p1], lambda: score(ck1, p1))
    plan["runs"]["stage1"] = str(p1)
    runs = [("original", "append")] + [
        (arm, inj)
        for arm in stage2_arms(args.rules, args.arms)
        for inj in args.injections
        if inj == "append" or args.injection_arms is None or arm in args.injection_arms
    ]
    for seed in args.seeds:
        for arm, inj in runs:
            label = run_label(arm, inj, seed)
            name = label.replace("@", "-").replace("+", "-")
            argv = train_argv(args, data[arm], out / "stage3", name, seed, **stage3_over(args, ck1, inj))
            path = scores / f"{name}.npz"
            ck = out / "stage3" / name / "checkpoints" / f"epoch_{stage3_over(args, ck1, inj)['epochs']}.pt"

            def run(argv=argv, ck=ck, path=path, name=name) -> None:
                cmd.train(argv, out / "stage3" / name)
                score(ck, path)
                if not args.keep_checkpoints:
                    ck.unlink()

            settings = {"argv": argv, "stage1": ck1_id, "stage2": plan["stage2"].get(arm)}
            steps.run(f"{tag}/{name}", settings, [path], run)
            plan["runs"][label] = str(path)
    return plan


def run_study(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The whole grid (resumable): per mention rate its plan, and the setup the report records."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    steps, cmd = Steps(out), Commands(out)
    plans = [run_rate(args, rate, steps, cmd) for rate in args.mention_rates]
    setup = {
        "seeds": list(args.seeds),
        "arms": ["stage1", "original", *stage2_arms(args.rules, args.arms)],
        "injections": list(args.injections),
        "injection_arms": None if args.injection_arms is None else list(args.injection_arms),
        "recipe": {
            k: getattr(args, k)
            for k in (
                "stage3_init",
                "stage3_lr",
                "stage3_warmup",
                "stage3_epochs",
                "stage3_samples",
                "stage3_shards",
            )
        },
        "model": args.model,
        "bootstrap": args.bootstrap,
        "steps_run_now": steps.ran,
        "step_seconds": steps.seconds,
        "wall_seconds_now": round(time.time() - t0, 1),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    return plans, setup
