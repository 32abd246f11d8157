"""``fgclep classify`` and :func:`classify`: a trained checkpoint applied to ECG files.

Each file is read by the project's own readers, in any sampling rate and lead order (leads matched by name):

- WFDB (``rec.hea``, or the record path without extension; ``.dat`` / Challenge ``.mat`` signal files beside
  the header): LUDB headers (``#<diagnoses>:``) through the LUDB reader (its common-ADC-gain correction, as the
  LUDB shards), every other header through the PhysioNet Challenge reader (any rate, any channels);
- ``.npy``: a ``[leads, samples]`` (or ``[samples, leads]``) array in millivolts, with ``fs`` and ``leads`` given.

It is then canonicalised exactly as ``fgclep shards`` does for training (:func:`fgclep_plugin.ecgdata.ecg.
canonicalize`: 12 leads by name, 500 Hz, 10 s, minimum length :data:`fgclep_plugin.defaults.MIN_SECONDS`), passed
through the model's own eval transform and embedded. A class's probability is the SigLIP pair probability
``sigmoid(t * cos + b)`` (:func:`fgclep_plugin.model.scoring.pair_probability`, the model's ``t`` and ``b``) of
the ECG and the class's zero-shot embedding (:func:`fgclep_plugin.model.zeroshot.template_classifier`: the
class words through :data:`~fgclep_plugin.model.zeroshot.ECG_TEMPLATES`, the path evaluation scores with).
Feature phrases (the stage-2 vocabulary, :data:`fgclep_plugin.augment.knowledge.PHRASE_TO_FEATURE`) are scored
as stage 2 validation scores a candidate: the phrase itself, the same pair probability.

A file that cannot be read or canonicalised is named on one line and listed among the rejects; the others are
still classified. torch and open_clip are imported when a model is loaded, not at module import: the ``fgclep``
command imports this module to build its parser (start-up time).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..augment.knowledge import PHRASE_TO_FEATURE
from ..cliargs import (
    EMBED_PRECISIONS,
    add_batch_size_argument,
    add_command,
    add_device_argument,
    add_model_arguments,
    add_out_argument,
    add_seed_argument,
    options,
    parse_checkpoint_path,
)
from ..defaults import DEFAULT_MODEL, MERL_DATA, MIN_SECONDS
from ..ecgdata.atomic import atomic_write_bytes
from ..ecgdata.ecg import canonicalize
from ..ecgdata.records import EcgRecord, RejectError
from ..ecgdata.sources.challenge import ChallengeSource
from ..ecgdata.sources.ludb import LudbSource
from ..evaluate.tasks import MERL_TASKS, get_task
from ..synth.vocabulary import DIAGNOSES, FEATURES

WFDB_SUFFIXES = (".hea", ".dat", ".mat")
FEATURE_PHRASES: tuple[str, ...] = tuple(PHRASE_TO_FEATURE)
"""The waveform-feature vocabulary ``--features`` scores: stage 2's normalised candidate phrases (the synthetic
vocabulary's canonical phrases and the knowledge base's extra ones)."""


@dataclass
class FileResult:
    """One input file: its class probabilities and cosines (in class order), its top feature phrases
    (``{"phrase", "probability", "cosine"}``, highest first), the device the model ran on, what was read
    (source, rate, leads found, length, the header's report), or, for a rejected file, ``reason`` and ``error``."""

    file: str
    device: str
    probabilities: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, float] = field(default_factory=dict)
    features: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was classified."""
        return self.error is None


# ------------------------------------------------------------------------------------------------- reading


@cache
def _wfdb_source(kind: str, folder: str) -> ChallengeSource | LudbSource:
    """One reader per (kind, folder): LUDB reads its ``ludb.csv`` once."""
    if kind == "ludb":
        return LudbSource(folder)
    return ChallengeSource(folder, dataset="wfdb", require_report=False)


def read_record(path: str | Path, fs: float | None = None, leads: Sequence[str] | None = None) -> EcgRecord:
    """The raw record of one input file (see the module docstring); ``fs`` and ``leads`` are needed for, and
    only used by, ``.npy`` files. Raises :class:`RejectError` naming the file."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        return _read_npy(p, fs, leads)
    record = p.with_suffix("") if p.suffix.lower() in WFDB_SUFFIXES else p
    hea = Path(f"{record}.hea")
    if not hea.is_file():
        if p.suffix.lower() == ".hea" or not p.exists():
            raise RejectError("missing-file", f"{path} not found")
        what = "a .mat signal file" if p.suffix.lower() == ".mat" else "a WFDB signal file"
        raise RejectError("missing-file", f"{path}: {what} needs its WFDB header {hea} beside it")
    return _wfdb_source("ludb" if _is_ludb_header(hea) else "wfdb", str(record.parent)).load(record.name)


def _is_ludb_header(hea: Path) -> bool:
    """A LUDB header: a ``#<diagnoses>:`` comment line. Read as plain text: parsing it with wfdb as well would
    double the cost of reading a record (wfdb's header parser is most of it)."""
    lines = hea.read_text(errors="replace").splitlines()
    return any(
        ln.lstrip("# \t").lower().startswith("<diagnoses>") for ln in lines if ln.lstrip().startswith("#")
    )


def _read_npy(path: Path, fs: float | None, leads: Sequence[str] | None) -> EcgRecord:
    if fs is None or not leads:
        raise RejectError("missing-fs-or-leads", f"{path}: a .npy file needs --fs and --leads")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RejectError("unreadable", f"{path}: {type(exc).__name__}: {exc}") from None
    n = len(leads)
    if x.ndim != 2 or n not in x.shape or not np.issubdtype(x.dtype, np.number):
        raise RejectError(
            "bad-shape", f"{path}: array {x.dtype}{list(x.shape)} is not [{n} leads, samples] of numbers"
        )
    signal = x if x.shape[0] == n else x.T  # [leads, samples]; a square array is read as [leads, samples]
    return EcgRecord("npy", path.stem, signal.astype(np.float64), float(fs), list(leads), "")


def canonical_ecg(
    path: str | Path, fs: float | None = None, leads: Sequence[str] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The canonical ``float16 [12, 5000]`` ECG of one file and what was read (source, record id, report and
    the canonicalisation metadata: original rate, length, leads found, derived / flat leads)."""
    rec = read_record(path, fs, leads)
    ecg, meta = canonicalize(rec, min_seconds=MIN_SECONDS)
    return ecg, {"source": rec.source, "record_id": rec.record_id, "report": rec.report, **meta}


# ------------------------------------------------------------------------------------------------- classes


def class_prompts(
    classes: Sequence[str] | None = None,
    task: str | None = None,
    prompts: str | Path | Mapping[str, str] | None = None,
    task_data: str | Path | None = None,
) -> dict[str, str]:
    """``{class: words put into the templates}``: ``classes`` (or the task's classes, or the prompt file's
    keys), worded by the prompt map first, then the task's words, then the name with ``_`` read as a space."""
    from ..model.zeroshot import load_prompt_map, mapped_prompt_text  # torch: start-up time (module doc)

    if classes is not None and task is not None:
        raise ValueError("give the classes or a task, not both")
    mapping = load_prompt_map(prompts) if isinstance(prompts, (str, Path)) else dict(prompts or {})
    task_words: Callable[[str], str] | None = None
    names: Sequence[str] | None = classes
    if task is not None:
        names, task_words = _task_classes(task, task_data)
    if names is None:
        names = list(mapping)
    names = [str(c).strip() for c in names if str(c).strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"a class is listed twice: {names}")
    return {
        c: mapping.get(c) or (task_words(c) if task_words else mapped_prompt_text(mapping, c)) for c in names
    }


def _task_classes(name: str, data: str | Path | None) -> tuple[tuple[str, ...], Callable[[str], str]]:
    """A task's classes and class words. The synthetic tasks' are the generator's vocabulary: ``get_task``
    would generate the whole corpus only to name its shards (the same words as ``evaluate.tasks.synth_task``)."""
    if name == "synth-diagnosis":
        words = {k: v["phrases"][0] for k, v in DIAGNOSES.items()}
        return tuple(words), words.__getitem__
    if name == "synth-feature":
        words = {k: v["phrase"] for k, v in FEATURES.items()}
        return tuple(words), words.__getitem__
    t = get_task(name, data or (MERL_DATA if name in MERL_TASKS else None))
    return t.class_names, t.prompt_text


# ----------------------------------------------------------------------------------------------- classify


def classify(
    files: Sequence[str | Path],
    *,
    model: str = DEFAULT_MODEL,
    checkpoint: str | None,
    classes: Sequence[str] | None = None,
    task: str | None = None,
    prompts: str | Path | Mapping[str, str] | None = None,
    features: bool = False,
    top: int = 5,
    fs: float | None = None,
    leads: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | None = None,
    precision: str = "fp32",
    seed: int = 0,
    task_data: str | Path | None = None,
    info: dict[str, Any] | None = None,
) -> list[FileResult]:
    """Classify ECG ``files`` (WFDB / Challenge ``.hea``+``.mat`` / ``.npy`` with ``fs`` and ``leads``) with model
    ``model`` at ``checkpoint`` (``None`` or ``"none"``: the random initial weights of seed ``seed``).

    Classes: ``classes`` (names; words mapped by ``prompts``), ``task`` (an evaluation task's classes and
    words; ``task_data``: its shard folder, MERL tasks only) or ``prompts`` alone (a ``{class: words}`` JSON
    file or mapping). ``features``: also the ``top`` feature phrases of each file. ``device``: ``None`` or
    ``auto`` = ``cuda:LOCAL_RANK`` if CUDA is available, else cpu; ``precision``: open_clip's name. One
    :class:`FileResult` per file, in order; a rejected file has ``error`` set.
    ``info``, if given, receives the run's model, device, SigLIP scale and bias, classes and timings.
    """
    import torch  # start-up time (module docstring)

    from ..model.scoring import embed_ecgs, embed_texts, load_model, pair_probability
    from ..model.transform import ecg_to_tensor
    from ..model.zeroshot import ECG_TEMPLATES, template_classifier

    if batch_size < 1 or top < 0:
        raise ValueError(f"batch size must be >= 1 and top >= 0, got {batch_size} and {top}")
    words = class_prompts(classes, task, prompts, task_data)
    if not words and not features:
        raise ValueError("nothing to score: give classes (classes, task or prompts) or ask for features")
    checkpoint = parse_checkpoint_path(checkpoint) if isinstance(checkpoint, str) else checkpoint
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # a checkpoint-less model: the same random weights every run
    # device None / "auto": load_model picks it (model.device.choose_device)
    lm = load_model(model, checkpoint, device=device, precision=precision)
    dev = str(lm.device)
    scale, bias = lm.logit_scale, lm.logit_bias
    names = list(words)
    classifier = (  # [D, C]
        template_classifier(lm.model, lm.tokenizer, list(words.values()), ECG_TEMPLATES, dev, precision)
        if names
        else None
    )
    phrases = torch.zeros(0, 0)
    if features:  # [F, D]
        phrases = embed_texts(lm.model, lm.tokenizer, FEATURE_PHRASES, device=dev, precision=precision)
    t_ready = time.perf_counter()

    results: list[FileResult] = []  # in the order of ``files``
    for start in range(0, len(files), batch_size):
        chunk, tensors = [], []
        for f in files[start : start + batch_size]:
            try:
                ecg, record = canonical_ecg(f, fs, leads)
                tensors.append(ecg_to_tensor(ecg, lm.preprocess))  # [12, L] at the model's rate
            except RejectError as exc:
                results.append(_rejected(f, dev, exc.reason, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001  a reader failure nobody anticipated: this file only
                results.append(_rejected(f, dev, "error", f"{f}: {type(exc).__name__}: {exc}"))
                continue
            chunk.append(FileResult(str(f), dev, record=record))
            results.append(chunk[-1])
        if not chunk:
            continue
        emb = embed_ecgs(lm.model, [torch.stack(tensors)], dev, precision)  # [B, D]
        if classifier is not None:
            cos = emb @ classifier  # [B, C]
            prob = pair_probability(cos, scale, bias)
            for r, c, p in zip(chunk, cos.tolist(), prob.tolist()):
                r.cosines, r.probabilities = dict(zip(names, c)), dict(zip(names, p))
        if features:
            fcos = emb @ phrases.T  # [B, F]
            fprob = pair_probability(fcos, scale, bias)
            best = fcos.argsort(dim=1, descending=True)[:, :top]
            for r, row, c, p in zip(chunk, best.tolist(), fcos.tolist(), fprob.tolist()):
                r.features = [
                    {"phrase": FEATURE_PHRASES[j], "probability": p[j], "cosine": c[j]} for j in row
                ]
    done = time.perf_counter()
    if info is not None:
        n_ok = sum(r.ok for r in results)
        info.update(
            model=model,
            checkpoint=checkpoint,
            device=dev,
            precision=precision,
            logit_scale=scale,
            logit_bias=bias,
            classes=words,
            templates=list(ECG_TEMPLATES),
            seconds_model=round(t_ready - t0, 3),
            seconds_classify=round(done - t_ready, 3),
            records_per_s=round(n_ok / (done - t_ready), 2) if done > t_ready else None,
        )
    return results


def _rejected(file: str | Path, device: str, reason: str, error: str) -> FileResult:
    return FileResult(str(file), device, reason=reason, error=" ".join(error.split()))  # one line


# ------------------------------------------------------------------------------------------------- output


def as_json(results: Sequence[FileResult], info: Mapping[str, Any]) -> str:
    """The run as JSON: ``info`` (model, device, classes, timings), ``results`` (classified files) and
    ``rejects`` (file, reason, error)."""
    out = {
        **info,
        "results": [
            {k: v for k, v in asdict(r).items() if k not in ("reason", "error")} for r in results if r.ok
        ],
        "rejects": [{"file": r.file, "reason": r.reason, "error": r.error} for r in results if not r.ok],
    }
    return json.dumps(out, indent=1) + "\n"


CSV_COLUMNS = ("file", "kind", "name", "probability", "cosine", "device", "error")


def as_csv(results: Sequence[FileResult]) -> str:
    """One row per (file, class) and (file, top feature) (``kind`` = ``class`` / ``feature``), and one
    ``rejected`` row per rejected file (``name`` = reason, ``error`` = the message); every row names the device."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        if not r.ok:
            w.writerow([r.file, "rejected", r.reason, "", "", r.device, r.error])
            continue
        for name, p in r.probabilities.items():
            w.writerow([r.file, "class", name, f"{p:.6g}", f"{r.cosines[name]:.6g}", r.device, ""])
        for f in r.features:
            w.writerow(
                [
                    r.file,
                    "feature",
                    f["phrase"],
                    f"{f['probability']:.6g}",
                    f"{f['cosine']:.6g}",
                    r.device,
                    "",
                ]
            )
    return buf.getvalue()


def as_text(results: Sequence[FileResult], info: Mapping[str, Any]) -> str:
    """Readable: per file its rate / length as read, classes by probability, then the top features."""
    lines = [f"model {info['model']} ({info['checkpoint'] or 'random weights'}) on {info['device']}"]
    for r in results:
        if not r.ok:
            lines.append(f"{r.file}: REJECTED {r.error}")
            continue
        rec = r.record
        lines.append(
            f"{r.file}: {rec['fs_original']:g} Hz, {rec['seconds_original']:g} s"
            + (f"; report: {rec['report']}" if rec.get("report") else "")
        )
        for name, p in sorted(r.probabilities.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {p:7.4f}  {name}  (cos {r.cosines[name]:+.3f})")
        for f in r.features:
            lines.append(f"  {f['probability']:7.4f}  feature: {f['phrase']}  (cos {f['cosine']:+.3f})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- CLI


SAME_NAMED_OPTIONS = (
    "model", "checkpoint", "task", "prompts", "features", "top", "fs", "batch_size", "device", "precision", "seed",
    "task_data",
)  # fmt: skip
"""The options ``fgclep classify`` passes on to :func:`classify` under their own names."""


def run(args: argparse.Namespace) -> int:
    """``fgclep classify``: exit 1 when no file was classified."""
    leads = [s.strip() for s in args.leads.split(",") if s.strip()] if args.leads else None
    classes = args.classes.split(",") if args.classes else None
    info: dict[str, Any] = {}
    results = classify(
        args.files,
        classes=classes,
        leads=leads,
        info=info,
        **options(args, *SAME_NAMED_OPTIONS),
    )
    for r in results:
        if not r.ok:
            print(f"fgclep classify: rejected {r.file}: {r.error}", file=sys.stderr)
    text = as_json(results, info) if args.json else as_csv(results) if args.csv else as_text(results, info)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    else:
        sys.stdout.write(text)
    n_ok = sum(r.ok for r in results)
    print(
        f"fgclep classify: {n_ok} of {len(results)} files classified on {info['device']} "
        f"({info['records_per_s']} records/s)" + (f"; written to {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0 if n_ok else 1


HELP = "class probabilities (and top waveform-feature phrases) of ECG files: WFDB, Challenge .mat, .npy"

EXAMPLES = """\
examples:
  fgclep classify ludb/data/1.hea cinc2021/E07500.mat --model FGCLEP-ResNet1d18-MiniLM \\
      --checkpoint runs/demo/stage1/checkpoints/epoch_6.pt --classes 'sinus rhythm,atrial fibrillation'
  fgclep classify rec.npy --fs 250 --leads I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6 --checkpoint C \\
      --task ludb-rhythm --features --top 5 --json --out rec.json"""


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep classify``."""
    p = add_command(sub, "classify", HELP, __doc__, epilog=EXAMPLES)
    p.add_argument("files", nargs="+", metavar="FILE", help="ECG files: rec.hea (or rec), rec.mat, x.npy")
    add_model_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--classes", default=None, help="comma-separated class names (words of the prompts)")
    which.add_argument("--task", default=None, help="an evaluation task's classes, e.g. ludb-rhythm")
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="JSON {class: prompt words}; alone, its keys are the classes",
    )
    p.add_argument("--task-data", default=None, help=f"a MERL task's shard folder (default {MERL_DATA})")
    p.add_argument(
        "--features", action="store_true", help="also the feature phrases the model scores highest"
    )
    p.add_argument("--top", type=int, default=5, help="how many feature phrases per file")
    p.add_argument("--fs", type=float, default=None, help="sampling rate (Hz) of .npy files")
    p.add_argument("--leads", default=None, help="comma-separated lead names of .npy rows, e.g. I,II,...,V6")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output (results, rejects, device, timings)")
    fmt.add_argument("--csv", action="store_true", help="CSV output, one row per (file, class | feature)")
    add_out_argument(p, "write the output to this file (atomically) instead of stdout", required=False)
    add_batch_size_argument(p, 32, "files per encoder batch")
    add_device_argument(p, "auto")  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu (load_model)
    p.add_argument("--precision", choices=EMBED_PRECISIONS, default="fp32", help="open_clip precision")
    add_seed_argument(p, "torch seed (the random weights of --checkpoint none)")
    p.set_defaults(func=run)
