"""The demo's stages: stage 1 (CLEP) and stage 3 (FG-CLEP and its controls) are runs of the real training
entry point under ``accelerate launch``; stage 2 validates candidate features with the stage-1 model
(``fgclep augment``'s function); the evaluation calls :func:`fgclep_plugin.evaluate.evaluate`.

Each stage function takes the demo's parsed arguments; :mod:`.pipeline` chains them through the stage runner.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..augment.rewrite import run_augment
from ..augment.rules import RuleConfig
from ..ecgdata.atomic import atomic_write_json
from ..evaluate import EvalSettings, evaluate
from ..evaluate.figures import make_figures
from ..evaluate.tasks import get_task
from ..model.scoring import load_model
from ..synth.corpus import ensure_synth_corpus
from ..train import accelerate_cpu_command
from ..trainargs import train_argv
from .config import KEEP_ALL, PROBE_TASKS, ZS_TASKS
from .report import format_curve


def checkpoint_path(out: str | Path, run: str, epochs: int) -> Path:
    """The checkpoint a demo training run ``run`` (``stage1``, ``stage3-validated``, ...) leaves after ``epochs``
    epochs: ``OUT/RUN/checkpoints/epoch_EPOCHS.pt`` (open_clip's layout under ``--logs OUT --name RUN``)."""
    return Path(out) / run / "checkpoints" / f"epoch_{epochs}.pt"


def untrained_auc(model_name: str, zeroshot_urls: str, label_key: str, seed: int) -> float:
    """Zero-shot AUC of the model as training starts (open_clip_train seeds with ``--seed`` before building)."""
    import open_clip  # start-up time: the fgclep command imports the demo to build its parser
    from open_clip_train.main import random_seed  # start-up time (as above)

    from ..model.registry import register  # imports open_clip (start-up time)
    from ..model.zeroshot import zero_shot_auc  # imports open_clip (start-up time)
    from ..training.zeroshot import get_zero_shot_data  # imports open_clip_train (start-up time)

    register()
    random_seed(seed, 0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    zs = get_zero_shot_data(zeroshot_urls, preprocess, label_key, batch_size=64)
    return zero_shot_auc(model, open_clip.get_tokenizer(model_name), zs.dataloader)["auc"]


def launch_command(args: argparse.Namespace, urls: dict[str, str]) -> list[str]:
    """``accelerate launch ... -m fgclep_plugin.train ...`` for the demo run: tensorboard, the loss log and the
    held-out zero-shot AUC after every epoch; the flags after ``--`` (``args.extra``) last."""
    monitor = ["--report-to", "tensorboard", "--log-every-n-steps", "10", "--ecg-zeroshot-data", urls["val"]]
    monitor += ["--ecg-zeroshot-label-key", "diagnoses", "--zeroshot-frequency", "1"]
    monitor += ["--loss-log", str(Path(args.logs) / args.name / "losses")]
    run = train_argv(args, urls["train"], args.logs, args.name, args.seed, monitor, extra=args.extra)
    return [*accelerate_cpu_command(args.processes), *run]


def read_curve(run_dir: Path) -> list[dict]:
    """(epoch, mean loss, AUC) rows from the run's loss log and open_clip's results.jsonl.

    Loss rows are grouped by the epoch they were logged in; of repeated steps (an epoch re-run after a resume)
    the last row counts, so each epoch's mean is that of the run that completed it.
    """
    by_step = {}
    for line in (run_dir / "losses-rank0.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row
    results = [
        json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()
    ]
    rows = []
    for i, r in enumerate(results):  # one line per epoch (--zeroshot-frequency 1)
        epoch = int(r.get("epoch", i + 1))  # completed epochs, 1-based; the loss log's epoch is 0-based
        chunk = [x for x in by_step.values() if x["epoch"] == epoch - 1]
        siglip, fnm = (
            sum(x[k] for x in chunk) / max(len(chunk), 1) for k in ("contrastive_loss", "fnm_loss")
        )
        rows.append(
            {"epoch": epoch, "loss": siglip + fnm, "siglip": siglip, "fnm": fnm, "auc": r["ecg-zeroshot-auc"]}
        )
    return rows


def train_run(args: argparse.Namespace, urls: dict[str, str], log=print) -> Path:
    """One training run under accelerate (``args.logs / args.name``); returns the run folder."""
    run_dir = Path(args.logs) / args.name
    cmd = launch_command(args, urls)
    log("running: " + " ".join(cmd[1:]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.processes)))
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if "Train Epoch" in line or "ECG zero-shot" in line or "Error" in line or "Traceback" in line:
                print(line.rstrip()[:240], flush=True)
    if proc.returncode:
        raise SystemExit(f"training failed (exit code {proc.returncode}); see {run_dir / 'out.log'}")
    return run_dir


def stage1(args: argparse.Namespace, urls: dict[str, str]) -> list[dict]:
    """Stage 1 (CLEP) into ``args.logs / args.name``: train, print and store the curve (``curve.json``)."""
    run_dir = Path(args.logs) / args.name
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: pass another --name or remove it")
    auc0 = untrained_auc(args.model, urls["val"], "diagnoses", args.seed)
    print(f"untrained zero-shot AUC on the held-out split: {auc0:.4f}", flush=True)
    train_run(args, urls)
    rows = [{"epoch": 0, "loss": None, "auc": auc0}, *read_curve(run_dir)]
    print("\n" + format_curve(rows))
    (run_dir / "curve.json").write_text(json.dumps(rows, indent=1))
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    """Stage 1 only (``fgclep demo --logs``): corpus, training, curve."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    urls = ensure_synth_corpus(args.synth_data, workers=args.gen_workers)
    return stage1(args, urls)


def parse_generator(text: str) -> tuple[str, str | None]:
    """``kb`` | ``vllm:<model>`` | ``openai:<url>`` -> (backend, model or URL)."""
    if text == "kb":
        return "kb", None
    kind, _, rest = text.partition(":")
    if kind in ("vllm", "openai") and rest:
        return kind, rest
    raise argparse.ArgumentTypeError(f"--generator takes kb, vllm:<model> or openai:<url>, got {text!r}")


def stage_args(args: argparse.Namespace, name: str, **over: Any) -> argparse.Namespace:
    """The demo's arguments for training run ``name`` in ``OUT`` (``--logs OUT --name NAME``), ``over`` set."""
    a = copy.copy(args)
    a.logs, a.name = str(Path(args.out)), name
    for k, v in over.items():
        setattr(a, k, v)
    return a


def stage3_input(urls: dict[str, str], shards: int) -> str:
    """The first ``shards`` training shards of the corpus (brace range)."""
    pattern = urls["train"]
    prefix = pattern[: pattern.index("{")]
    return f"{prefix}{{000000..{shards - 1:06d}}}.tar"


def stage2(args: argparse.Namespace, urls: dict[str, str], ckpt: Path, kind: str) -> dict[str, Any]:
    """Candidates (LLM backends: ``fgclep features generate`` first) validated by stage 1 into
    ``OUT/stage2-<kind>/``; ``kind`` 'unvalidated' keeps every candidate, 'perfect-validation' exactly those whose
    feature the ground truth has. Writes ``summary.json``."""
    backend, model = parse_generator(args.generator)
    cache = Path(args.out) / "candidates"
    data = stage3_input(urls, args.stage3_shards)
    if backend != "kb":
        cmd = [sys.executable, "-m", "fgclep_plugin.cli", "features", "generate", "--data", data]
        cmd += ["--cache", str(cache), "--backend", backend]
        cmd += (
            ["--model", model]
            if backend == "vllm"
            else ["--base-url", model, "--model", args.llm_model or "default"]
        )
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    cfg = {
        "unvalidated": RuleConfig(**KEEP_ALL),
        "perfect-validation": RuleConfig(rule="oracle"),
    }.get(kind, RuleConfig(rule=args.rule))
    folder = Path(args.out) / f"stage2-{kind}"
    summary = run_augment(
        data,
        str(folder / "train-%06d.tar"),
        str(cache),
        args.model,
        str(ckpt),
        cfg,
        backend=backend,
        llm_model=None if backend == "kb" else (model if backend == "vllm" else args.llm_model or "default"),
        calib_size=args.calib_size,
    )
    atomic_write_json(folder / "summary.json", summary)
    return summary


def evaluate_all(args: argparse.Namespace, ckpts: dict[str, Path]) -> list[dict[str, Any]]:
    """Zero-shot rows for every checkpoint and task, linear-probe rows for CLEP and FG-CLEP."""
    zs = EvalSettings(
        checkpoints={k: str(v) for k, v in ckpts.items()},
        tasks=ZS_TASKS,
        protocols=("zeroshot",),
        model=args.model,
        ludb_data=args.ludb_data,
        synth_data=args.synth_data,
        cache=str(Path(args.out) / "eval" / "embeddings"),
        bootstrap=args.bootstrap,
        seed=args.seed,
        progress=False,
        prompt_sets=("templates", "ens"),
        fractions=(1.0, 100.0),
        repeats=1,
        probe_epochs=args.probe_epochs,
    )
    print(f"[eval] zero-shot: {len(ckpts)} checkpoints x {len(ZS_TASKS)} tasks ...", flush=True)
    rows = evaluate(zs)
    main = {k: v for k, v in zs.checkpoints.items() if k in ("CLEP", "FG-CLEP")}
    lin = replace(zs, checkpoints=main, tasks=PROBE_TASKS, protocols=("linear",))
    print(f"[eval] linear probe: {len(main)} checkpoints x {len(PROBE_TASKS)} tasks ...", flush=True)
    rows += evaluate(lin)
    return rows


def figures(args: argparse.Namespace, ckpts: dict[str, Path]) -> None:
    """t-SNE and report-similarity figures of CLEP and FG-CLEP on the synthetic test split."""
    task = get_task("synth-diagnosis", args.synth_data)
    for label in ("CLEP", "FG-CLEP"):
        lm = load_model(args.model, str(ckpts[label]))
        make_figures(
            lm, task.urls("test"), Path(args.out) / "figures" / label, task.label_key, progress=False
        )
