"""Demo: the whole FG-CLEP method on the embedded data, one command, one table.

    fgclep demo [--out DIR] [--generator kb|vllm:<model>|openai:<url>] [--fast]

1. stage 1 (CLEP): the synthetic corpus (generated on first use), the real training entry point under
   ``accelerate launch``, the learning curve (epoch, SigLIP + FNM loss, held-out zero-shot AUC; epoch 0 = the
   untrained model);
2. stage 2: candidate features per report (the offline knowledge base in-process, or an LLM through
   ``fgclep features generate``) validated with the stage-1 model (``fgclep augment``), plus a control that
   keeps every candidate unvalidated;
3. stage 3 (FG-CLEP): the same entry point with ``--pretrained`` on the validated shards, and the two controls
   for the same epochs: unvalidated candidates, original reports;
4. evaluation (``fgclep eval``'s functions): zero-shot macro AUC with bootstrap interval (templates and ENS) on
   the synthetic diagnoses, the synthetic waveform features and LUDB records 151-200, the linear probe, and
   the ground-truth precision / recall of the kept features; ``results.md``, ``results.json``, figures.

Every stage writes a settings manifest (its settings + the digests of the stages it reads); a re-run skips
stages whose manifest matches and re-runs a stage whose settings or inputs changed (and what depends on it).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import HelpFormatter
from .train import accelerate_cpu_command

DEFAULT_MODEL = "FGCLEP-ResNet1d18-MiniLM"
# FNM weight of the demo. With Eq. 6's normalisation (the loss default) the FNM term sums each ECG's |cos - S|
# over the B reports, so it grows with the batch; at the demo's B = 32 the paper's 0.5 makes FNM more than twice
# the SigLIP term and slows the diagnosis zero-shot AUC curve (measured, README "Learning on the synthetic
# corpus"; it reads feature phrases better), while 0.05 keeps FNM at about a fifth of SigLIP and ends near the
# old term's diagnosis AUC. The paper config
# (B = 100) keeps 0.5, the training entry point's default.
DEMO_FNM_LAMBDA = 0.05


def untrained_auc(model_name: str, zeroshot_urls: str, label_key: str, seed: int) -> float:
    """Zero-shot AUC of the model as training starts (open_clip_train seeds with ``--seed`` before building)."""
    import open_clip
    from open_clip_train.main import random_seed

    from .model.registry import register
    from .model.zeroshot import zero_shot_auc
    from .training.zeroshot import get_zero_shot_data

    register()
    random_seed(seed, 0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    zs = get_zero_shot_data(zeroshot_urls, preprocess, label_key, batch_size=64)
    return zero_shot_auc(model, open_clip.get_tokenizer(model_name), zs.dataloader)["auc"]


def launch_command(args: argparse.Namespace, urls: dict[str, str]) -> list[str]:
    """``accelerate launch ... -m fgclep_plugin.train ...`` for the demo run."""
    return [
        *accelerate_cpu_command(args.processes),
        "--model",
        args.model,
        "--train-data",
        urls["train"],
        "--train-num-samples",
        str(args.train_samples),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--wd",
        "1e-4",
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        "--precision",
        args.precision,
        "--seed",
        str(args.seed),
        "--logs",
        str(args.logs),
        "--name",
        args.name,
        "--save-frequency",
        "0",
        "--report-to",
        "tensorboard",
        "--log-every-n-steps",
        "10",
        "--ecg-zeroshot-data",
        urls["val"],
        "--ecg-zeroshot-label-key",
        "diagnoses",
        "--zeroshot-frequency",
        "1",
        "--loss-log",
        str(Path(args.logs) / args.name / "losses"),
        "--fnm-lambda",
        str(args.fnm_lambda),
        *args.extra,
    ]


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


def format_curve(rows: list[dict]) -> str:
    lines = ["epoch   train loss (SigLIP + FNM)        zero-shot AUC"]
    for r in rows:
        loss = (
            "        -"
            if r.get("loss") is None
            else (f"{r['loss']:9.4f} ({r['siglip']:.4f} + {r['fnm']:.4f})")
        )
        lines.append(f"{r['epoch']:5d}   {loss:<30s}   {r['auc']:.4f}")
    return "\n".join(lines)


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
    """Stage 1 only (kept for callers of the stage-1 demo): corpus, training, curve."""
    from .synth.corpus import ensure_synth_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    urls = ensure_synth_corpus(args.root, workers=args.gen_workers)
    return stage1(args, urls)


# ---------------------------------------------------------------------------------------------------------
# Stage bookkeeping: a stage is done when its manifest (settings + input digests) matches and its outputs exist.


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs named stages in ``out``, skipping those whose ``.demo/<name>.json`` manifest matches."""

    def __init__(self, out: str | Path, log: Callable[[str], None] = print):
        self.out = Path(out)
        self.state = self.out / ".demo"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.digests: dict[str, str] = {}
        self.ran: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(
        self,
        name: str,
        settings: dict[str, Any],
        inputs: list[str],
        outputs: list[str | Path],
        fn: Callable[[], Any],
        clear: list[str | Path] = (),
    ) -> str:
        """Run ``fn`` unless done; ``inputs`` are names of earlier stages; ``clear`` is removed before a
        (re-)run (partial or stale outputs). Returns the stage's digest."""
        from .ecgdata.shards import atomic_write_json

        manifest = {"settings": settings, "inputs": {i: self.digests[i] for i in inputs}}
        d = digest(manifest)
        path = self.state / f"{name}.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old is not None and old.get("digest") == d and all(Path(o).exists() for o in outputs):
            self.log(f"[{name}] done earlier with the same settings (manifest {path.name}): skipped")
        else:
            if old is not None and old.get("digest") != d:
                changed = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
                changed += [i for i in inputs if old.get("inputs", {}).get(i) != manifest["inputs"][i]]
                self.log(
                    f"[{name}] settings or inputs changed ({', '.join(changed) or 'inputs'}): re-running"
                )
            path.unlink(missing_ok=True)
            for c in clear:
                if Path(c).is_dir():
                    shutil.rmtree(c)
                elif Path(c).exists():
                    Path(c).unlink()
            self.log(f"[{name}] running ...")
            t0 = time.time()
            fn()
            self.seconds[name] = round(time.time() - t0, 1)
            missing = [str(o) for o in outputs if not Path(o).exists()]
            if missing:
                raise RuntimeError(f"stage {name} finished without its outputs: {', '.join(missing)}")
            atomic_write_json(path, {**manifest, "digest": d, "seconds": self.seconds[name]})
            self.ran.append(name)
            self.log(f"[{name}] finished in {self.seconds[name]:.0f} s")
        self.digests[name] = d
        return d


# ---------------------------------------------------------------------------------------------------------
# The three stages and the evaluation.

FAST = {  # --fast: about 6 minutes on 2 free cores, corpus included (the test of the whole demo)
    "epochs": 3,
    "train_samples": 640,
    "stage3_epochs": 1,
    "stage3_samples": 320,
    "stage3_shards": 1,
    "calib_size": 200,
    "bootstrap": 100,
    "probe_epochs": 5,
}
RUNS = ("validated", "unvalidated", "original")  # stage-3 training data: FG-CLEP and the two controls
KEEP_ALL = {"rule": "cosine", "cosine_threshold": -2.0}  # cosine is >= -1: every candidate kept (control)
ZS_TASKS = ("synth-diagnosis", "synth-feature", "ludb-rhythm")
PROBE_TASKS = ("synth-diagnosis", "synth-feature")


def parse_generator(text: str) -> tuple[str, str | None]:
    """``kb`` | ``vllm:<model>`` | ``openai:<url>`` -> (backend, model or URL)."""
    if text == "kb":
        return "kb", None
    kind, _, rest = text.partition(":")
    if kind in ("vllm", "openai") and rest:
        return kind, rest
    raise argparse.ArgumentTypeError(f"--generator takes kb, vllm:<model> or openai:<url>, got {text!r}")


def apply_fast(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """With ``--fast``: the FAST values for every setting left at its default."""
    if args.fast:
        for k, v in FAST.items():
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, v)


def _stage_args(args: argparse.Namespace, name: str, **over: Any) -> argparse.Namespace:
    a = copy.copy(args)
    a.logs, a.name = str(Path(args.out)), name
    for k, v in over.items():
        setattr(a, k, v)
    return a


def _ckpt(args: argparse.Namespace, name: str, epochs: int) -> Path:
    return Path(args.out) / name / "checkpoints" / f"epoch_{epochs}.pt"


def stage2(args: argparse.Namespace, urls: dict[str, str], ckpt: Path, kind: str) -> dict[str, Any]:
    """Candidates (LLM backends: ``fgclep features generate`` first) validated by stage 1 into
    ``OUT/stage2-<kind>/``; ``kind`` 'unvalidated' keeps every candidate. Writes ``summary.json``."""
    from .augment.rewrite import run_augment
    from .augment.validate import RuleConfig
    from .ecgdata.shards import atomic_write_json

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
    cfg = RuleConfig(**KEEP_ALL) if kind == "unvalidated" else RuleConfig(rule=args.rule)
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


def stage3_input(urls: dict[str, str], shards: int) -> str:
    """The first ``shards`` training shards of the corpus (brace range)."""
    pattern = urls["train"]
    prefix = pattern[: pattern.index("{")]
    return f"{prefix}{{000000..{shards - 1:06d}}}.tar"


def evaluate_all(args: argparse.Namespace, ckpts: dict[str, Path]) -> list[dict[str, Any]]:
    """Zero-shot rows for every checkpoint and task, linear-probe rows for CLEP and FG-CLEP."""
    from .evaluate import EvalSettings, evaluate

    zs = EvalSettings(
        checkpoints={k: str(v) for k, v in ckpts.items()},
        tasks=ZS_TASKS,
        protocols=("zeroshot",),
        model=args.model,
        ludb_data=args.ludb_data,
        synth_data=args.root,
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
    from .evaluate.figures import make_figures
    from .evaluate.tasks import get_task
    from .model.scoring import load_model

    task = get_task("synth-diagnosis", args.root)
    for label in ("CLEP", "FG-CLEP"):
        lm = load_model(args.model, str(ckpts[label]))
        make_figures(
            lm, task.urls("test"), Path(args.out) / "figures" / label, task.label_key, progress=False
        )


COLUMNS = ("CLEP", "FG-CLEP", "unvalidated", "original")


def _find(rows: list[dict], label: str, task: str, **kw: Any) -> dict | None:
    for r in rows:
        if r["checkpoint_label"] == label and r["task"] == task and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def demo_table(rows: list[dict], summaries: dict[str, dict]) -> list[dict[str, Any]]:
    """One line per measure, one value per column (CLEP = stage 1; the others stage 3 on each data)."""
    out = []
    for task in ZS_TASKS:
        for ps in ("templates", "ens"):
            line = {"measure": f"{task} zero-shot macro AUC ({ps})"}
            for c in COLUMNS:
                r = _find(rows, c, task, protocol="zero-shot", prompt_set=ps)
                line[c] = None if r is None else {"value": r["value"], "interval": r.get("interval")}
            out.append(line)
    for task in PROBE_TASKS:
        for frac in (1.0, 100.0):
            line = {"measure": f"{task} linear probe macro AUC ({frac:g} % labels)"}
            for c in COLUMNS:
                r = _find(rows, c, task, protocol="linear probe", fraction=frac)
                line[c] = None if r is None else {"value": r["value"], "interval": r.get("interval")}
            out.append(line)
    for what in ("kept_per_report", "precision", "recall"):
        line = {"measure": f"stage-2 features: {what.replace('_', ' ')} (ground truth)"}
        for c, kind in (("FG-CLEP", "validated"), ("unvalidated", "unvalidated")):
            s = summaries.get(kind)
            if s is None:
                continue
            if what == "kept_per_report":
                line[c] = {"value": s["kept_per_report"]}
            else:
                gt = next((g for g in s.get("ground_truth", []) if g["rule"] == s["rule"]), None)
                line[c] = None if gt is None or gt[what] is None else {"value": gt[what]}
        out.append(line)
    return out


def _cell(v: dict | None) -> str:
    if not v:
        return "-"
    iv = v.get("interval")
    if iv and iv[0] is not None:
        return f"{v['value']:.3f} [{iv[0]:.3f}, {iv[1]:.3f}]"
    return f"{v['value']:.3f}"


def format_table(table: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`demo_table`."""
    lines = ["| measure | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for line in table:
        lines.append(f"| {line['measure']} | " + " | ".join(_cell(line.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The whole demo (resumable): returns the results written to ``OUT/results.json``."""
    from .ecgdata.shards import atomic_write_bytes, atomic_write_json
    from .evaluate.results import format_markdown
    from .synth.corpus import ensure_synth_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    out = Path(args.out)
    st = Stages(out)
    print(f"[corpus] synthetic corpus in {args.root} (generated on first use) ...", flush=True)
    urls = ensure_synth_corpus(args.root, workers=args.gen_workers)
    s1 = _stage_args(args, args.name or "stage1")
    s1_keys = ("model", "epochs", "train_samples", "batch_size", "lr", "warmup", "fnm_lambda", "precision")
    s1_set = {k: getattr(args, k) for k in (*s1_keys, "processes", "seed", "extra")}
    s1_set["corpus"] = urls
    ck1 = _ckpt(args, s1.name, args.epochs)
    st.run("stage1", s1_set, [], [ck1], lambda: stage1(s1, urls), clear=[out / s1.name])

    summaries: dict[str, dict] = {}
    for kind in ("validated", "unvalidated"):
        folder = out / f"stage2-{kind}"
        s2_set = {
            "generator": args.generator,
            "rule": "keep-all" if kind == "unvalidated" else args.rule,
            "calib_size": args.calib_size,
            "shards": args.stage3_shards,
        }
        st.run(
            f"stage2-{kind}",
            s2_set,
            ["stage1"],
            [folder / "summary.json"],
            lambda kind=kind: summaries.__setitem__(kind, stage2(args, urls, ck1, kind)),
            clear=[folder],
        )
        summaries[kind] = json.loads((folder / "summary.json").read_text())

    ckpts = {"CLEP": ck1}
    for kind, label in zip(RUNS, ("FG-CLEP", "unvalidated", "original"), strict=True):
        data = stage3_input(urls, args.stage3_shards) if kind == "original" else summaries[kind]["urls"]
        name = f"stage3-{kind}"
        s3 = _stage_args(
            args,
            name,
            epochs=args.stage3_epochs,
            train_samples=args.stage3_samples,
            lr=args.stage3_lr,
            warmup=0,
            extra=[*args.extra, "--pretrained", str(ck1)],
        )
        s3_set = {k: getattr(s3, k) for k in (*s1_keys, "processes", "seed", "extra")}
        s3_set["data"] = data
        ck = _ckpt(args, name, args.stage3_epochs)
        st.run(
            name,
            s3_set,
            ["stage1"] + ([] if kind == "original" else [f"stage2-{kind}"]),
            [ck],
            lambda s3=s3, data=data: train_run(s3, {"train": data, "val": urls["val"]}),
            clear=[out / name],
        )
        ckpts[label] = ck

    results_path = out / "results.json"
    ev_set = {"bootstrap": args.bootstrap, "probe_epochs": args.probe_epochs, "ludb": args.ludb_data}
    stage_inputs = ["stage1", "stage2-validated", "stage2-unvalidated", *(f"stage3-{k}" for k in RUNS)]

    def do_eval() -> None:
        rows = evaluate_all(args, ckpts)
        print("[figures] t-SNE and similarity maps of CLEP and FG-CLEP ...", flush=True)
        figures(args, ckpts)
        table = demo_table(rows, summaries)
        curve = json.loads((out / s1.name / "curve.json").read_text())
        meta = {
            "command": "fgclep demo " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
            "model": args.model,
            "bootstrap": args.bootstrap,
            "seed": args.seed,
            "stage_seconds": st.seconds,
            "load_average": os.getloadavg(),
        }
        md = [
            "# fgclep demo",
            "",
            (
                "CLEP = stage 1; FG-CLEP = stage 3 on validated features; unvalidated / original = stage 3 for the "
                "same epochs on every proposed feature / on the original reports (controls)."
            ),
            "",
            format_table(table),
            "",
            "## Stage-1 learning curve",
            "",
            "```",
            format_curve(curve),
            "```",
            "",
            format_markdown(rows, meta),
        ]
        atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())
        aug = {
            k: {
                "ground_truth": s["ground_truth"],
                "kept_per_report": s["kept_per_report"],
                "rule": s["rule"],
                "urls": s["urls"],
            }
            for k, s in summaries.items()
        }
        atomic_write_json(
            results_path,
            {
                "meta": meta,
                "table": table,
                "curve": curve,
                "augment": aug,
                "checkpoints": {k: str(v) for k, v in ckpts.items()},
                "rows": rows,
            },
        )

    st.run("eval", ev_set, stage_inputs, [results_path, out / "results.md"], do_eval, clear=[results_path])
    result = json.loads(results_path.read_text())
    print("\n" + format_table(result["table"]))
    print(f"\nstages run now: {', '.join(st.ran) or 'none (all done earlier)'}; {time.time() - t0:.0f} s")
    print(f"written: {results_path}, {out / 'results.md'}, figures in {out / 'figures'}")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="data/synth", help="synthetic corpus folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config")
    p.add_argument("--epochs", type=int, default=6, help="training epochs")
    p.add_argument("--train-samples", type=int, default=1600, help="training samples per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument(
        "--fnm-lambda",
        type=float,
        default=DEMO_FNM_LAMBDA,
        help="weight of the FNM term (Eq. 6 normalisation; the paper's 0.5 is measured too strong at batch 32)",
    )
    p.add_argument("--workers", type=int, default=1, help="dataloader workers")
    p.add_argument(
        "--precision",
        default="auto",
        help="open_clip precision; auto: amp_bf16 on a CPU with native bf16 (AVX512-BF16/AMX: ~2x fp32), "
        "else fp32 (emulated bf16 is ~30x slower in the text tower's backward)",
    )
    p.add_argument("--processes", type=int, default=1, help="accelerate processes (CPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument(
        "--logs",
        default=None,
        help="stage 1 ONLY, into LOGS/NAME (the stage-1 demo: curve.json, checkpoints); default: the whole demo",
    )
    p.add_argument(
        "--name", default=None, help="stage-1 run name (default: stage1; with --logs demo-<model>-...)"
    )
    p.add_argument(
        "--gen-workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes generating the synthetic corpus (the same bytes for any number)",
    )
    g = p.add_argument_group("whole demo (stages 2 and 3, evaluation)")
    g.add_argument("--out", default="runs/demo", help="folder of every stage, results.md/json and figures")
    g.add_argument(
        "--generator",
        default="kb",
        help="candidate features: kb (offline knowledge base), vllm:<model dir>, openai:<server url>",
    )
    g.add_argument("--llm-model", default=None, help="openai: the served model name")
    g.add_argument(
        "--fast",
        action="store_true",
        help="small settings (about 6 minutes; the demo's test: too short to learn)",
    )
    g.add_argument("--rule", default="quantile", choices=("quantile", "cosine", "paper"), help="stage-2 rule")
    g.add_argument("--calib-size", type=int, default=500, help="reference ECGs of the quantile rule")
    g.add_argument("--stage3-shards", type=int, default=2, help="training shards (500 ECGs each) augmented")
    g.add_argument("--stage3-epochs", type=int, default=2, help="stage-3 epochs (each run and control)")
    g.add_argument("--stage3-samples", type=int, default=800, help="stage-3 training samples per epoch")
    g.add_argument("--stage3-lr", type=float, default=1e-4, help="stage-3 learning rate")
    g.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the test records")
    g.add_argument("--probe-epochs", type=int, default=30, help="linear-probe head epochs")
    g.add_argument("--ludb-data", default="shards/ludb", help="the LUDB shards (test = records 151-200)")
    p.add_argument("extra", nargs="*", help="more flags for fgclep_plugin.train (after --)", default=[])


def _main_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .training.precision import resolve_precision

    if args.precision == "auto":
        args.precision = resolve_precision("auto", "cpu")
        print(f"[precision] auto -> {args.precision} (native bf16 on this CPU: {args.precision != 'fp32'})")
    if args.logs is not None:  # stage 1 only
        args.name = args.name or f"demo-{args.model}-{args.epochs}ep-seed{args.seed}"
        run(args)
        return 0
    parse_generator(args.generator)
    apply_fast(args, parser)
    run_demo(args)
    return 0


def add_cli(subparsers) -> None:
    """``fgclep demo``."""
    p = subparsers.add_parser(
        "demo",
        help="the whole method on the embedded data: CLEP, validated features, FG-CLEP, controls, one table",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=lambda a: _main_from_args(a, p))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.demo",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    return _main_from_args(p.parse_args(argv), p)


if __name__ == "__main__":
    sys.exit(main())
