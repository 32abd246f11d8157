"""The model card (``README.md``) of an exported model: architecture, how to load it, the training run's
settings (open_clip's ``params.txt`` beside ``checkpoints/``), measured results (``results.json`` of
``fgclep eval``), intended use and limits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARAMS_FILE = "params.txt"  # open_clip_train writes it into the run folder, beside checkpoints/
RESULTS_FILE = "results.json"

# params.txt keys shown on the card, in this order (others describe logging and infrastructure)
TRAINING_KEYS = (
    "name",
    "model",
    "train_data",
    "train_num_samples",
    "epochs",
    "batch_size",
    "world_size",
    "accum_freq",
    "lr",
    "wd",
    "warmup",
    "lr_scheduler",
    "precision",
    "siglip",
    "pretrained",
    "resume",
    "lock_text",
    "lock_text_unlocked_layers",
    "ecg_feature_injection",
    "seed",
)
TRAINING_PREFIXES = ("fnm_",)  # the plugin's loss settings: every key that starts with these


@dataclass
class Source:
    """Where the exported weights come from: the checkpoint file, its epoch, its SHA-256."""

    checkpoint: Path
    epoch: Any
    sha256: str


@dataclass
class Results:
    """Measured results for the card: ``results.json`` rows, whether they name this checkpoint, the file."""

    rows: list[dict[str, Any]]
    own: bool
    path: Path


def run_folder(checkpoint: Path) -> Path | None:
    """The open_clip run folder of ``checkpoint`` (``RUN/checkpoints/epoch_N.pt`` -> ``RUN``, or the folder
    holding the checkpoint), recognised by its ``params.txt``; ``None`` when there is none."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / PARAMS_FILE).is_file():
            return folder
    return None


def read_params(path: Path) -> dict[str, str]:
    """open_clip's ``params.txt`` (``key: value`` lines) as a dict of strings."""
    params = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            params[key.strip()] = value.strip()
    return params


def training_settings(params: dict[str, str]) -> dict[str, str]:
    """The card's subset of ``params`` (empty and ``None`` values left out)."""
    keys = [k for k in TRAINING_KEYS if k in params]
    keys += sorted(k for k in params if k.startswith(TRAINING_PREFIXES))
    return {k: params[k] for k in keys if params[k] not in ("", "None")}


def find_results(checkpoint: Path) -> Path | None:
    """A ``results.json`` beside the checkpoint or in its run folder, if any."""
    folders = [checkpoint.parent] + ([run_folder(checkpoint)] if run_folder(checkpoint) else [])
    for folder in folders:
        if (folder / RESULTS_FILE).is_file():
            return folder / RESULTS_FILE
    return None


def same_checkpoint(recorded: Path, checkpoint: Path) -> bool:
    """Whether a results row's checkpoint path (relative to where ``fgclep eval`` ran) is ``checkpoint``:
    the same resolved path, or the same ``run/checkpoints/epoch_N.pt`` tail."""
    return (
        recorded.resolve() == checkpoint.resolve() or recorded.parts[-3:] == checkpoint.resolve().parts[-3:]
    )


def read_results(path: Path, checkpoint: Path) -> Results:
    """Rows of ``fgclep eval``'s ``results.json``: those measured on ``checkpoint`` when any are, else all.
    ``ValueError`` naming the file when it is not such a file."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
        mine = [r for r in rows if r.get("checkpoint") and same_checkpoint(Path(r["checkpoint"]), checkpoint)]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a results.json of fgclep eval ({type(e).__name__}: {e})") from None
    return Results(mine, True, path) if mine else Results(list(rows), False, path)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def _setting(row: dict[str, Any]) -> str:
    if row.get("protocol") == "zero-shot":
        return str(row.get("prompt_set", "-"))
    return f"{row['fraction']:g} % of train labels" if "fraction" in row else "-"


def results_section(rows: Sequence[dict[str, Any]], source: str, own: bool) -> list[str]:
    """The measured results as a Markdown table (task, protocol, setting, metric, value, interval, records)."""
    lines = [
        (
            f"Measured by `fgclep eval` ({source}); macro AUC over the test classes with both outcomes, 95 % "
            "bootstrap interval over test records."
        ),
    ]
    if not own:
        lines.append(
            "None of the file's rows names this checkpoint's path: all rows are listed with their "
            "checkpoint label; check that they describe this model."
        )
    lines += [
        "",
        "| checkpoint | task | protocol | prompt set / train fraction | metric | value | 95 % interval | test records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        iv = r.get("interval")
        interval = f"{iv[0]:.3f}-{iv[1]:.3f}" if iv else "-"
        cells = [
            r.get("checkpoint_label", "-"),
            r.get("task", "-"),
            r.get("protocol", "-"),
            _setting(r),
            r.get("metric", "-"),
            _fmt(r.get("value")),
            interval,
            r.get("n_records", "-"),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _architecture(name: str, cfg: dict[str, Any]) -> list[str]:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "hf_model_name" in text:
        text_tower = f"Hugging Face text encoder (config.json in this folder; {text.get('hf_pooler_type', 'default')} pooling)"
    else:
        text_tower = (
            f"open_clip text transformer ({text.get('layers', '?')} layers, width {text.get('width', '?')}) "
            "with the MiniLM WordPiece tokenizer"
        )
    return [
        f"- model config: `{name}` of fgclep-plugin (fully resolved in `open_clip_config.json`)",
        (
            f"- ECG tower: {vision.get('arch', '?')} 1D ResNet, width {vision.get('width', '?')}, input "
            f"{vision.get('leads', 12)} leads x {vision.get('input_length', '?')} samples at "
            f"{vision.get('sample_rate', '?')} Hz, normalisation `{vision.get('norm', '?')}`"
        ),
        f"- text tower: {text_tower}, context length {text.get('context_length', '?')}",
        (
            f"- joint embedding: {cfg.get('embed_dim', '?')} dimensions; pair probability "
            "`sigmoid(exp(logit_scale) * cos + logit_bias)` (SigLIP head)"
        ),
    ]


def model_card(
    name: str,
    cfg: dict[str, Any],
    out: Path,
    source: Source,
    run: Path | None,
    results: Results | None,
    repo: str | None = None,
) -> str:
    """The exported folder's ``README.md`` (Hugging Face model card: YAML front matter, then Markdown)."""
    where = f"local-dir:{out}"
    lines = [
        "---",
        "library_name: open_clip",
        "license: mit",
        "tags: [ecg, electrocardiogram, clip, siglip, fg-clep, open_clip, research-only]",
        "---",
        "",
        f"# {name} (FG-CLEP ECG-report model)",
        "",
        (
            "A contrastive ECG-report model trained with fgclep-plugin (FG-CLEP, fine-grained contrastive "
            "language-ECG pre-training, ICML 2025, as an open_clip plugin). It embeds 12-lead ECGs and report "
            "sentences into one space: zero-shot classification with text prompts, text-to-ECG retrieval, "
            "linear probing."
        ),
        "",
        (
            "**Research use only. Not for clinical use: not a medical device, not validated for diagnosis or "
            "patient care.**"
        ),
        "",
        "## Model",
        "",
        *_architecture(name, cfg),
        (
            f"- weights: `open_clip_model.safetensors`, from `{source.checkpoint.name}` (epoch {source.epoch}; "
            f"sha256 of the checkpoint file `{source.sha256}`)"
        ),
        "",
        "## Loading",
        "",
        "Needs `pip install fgclep-plugin` (the ECG tower and ECG transforms are the plugin's); works offline.",
        "",
        "```python",
        "import fgclep_plugin  # registers the ECG tower and the ECG transforms with open_clip",
        "import open_clip",
        "",
        f'model, _, preprocess = open_clip.create_model_and_transforms("{where}")',
        f'tokenizer = open_clip.get_tokenizer("{where}")',
        "ecg = preprocess(signal)  # signal: [12, 5000] float, mV, 500 Hz, leads I II III aVR aVL aVF V1-V6",
        "e = model.encode_image(ecg[None], normalize=True)",
        't = model.encode_text(tokenizer(["atrial fibrillation"]), normalize=True)',
        "```",
        "",
    ]
    if repo:
        lines += [
            (
                f"From the Hub: `hf-hub:{repo}` in place of `local-dir:...` (the Hub copy's config names the "
                "repository for the text tower and tokenizer). This folder's `open_clip_config.json` names "
                "the text tower as `folder:.`, the folder being loaded: it loads wherever the folder is moved."
            ),
            "",
        ]
    else:
        lines += [
            (
                "`open_clip_config.json` names the text tower as `folder:.`, the folder being loaded (resolved "
                "after `import fgclep_plugin`): the folder loads wherever it is moved."
            ),
            "",
        ]
    lines += ["## Training", ""]
    params = read_params(run / PARAMS_FILE) if run else {}
    if params:
        settings = training_settings(params)
        lines += [
            f"Settings of the training run (`{run / PARAMS_FILE}`, written by open_clip):",
            "",
            "| setting | value |",
            "|---|---|",
            *[f"| {k} | {_cell(v)} |" for k, v in settings.items()],
        ]
        if params.get("model") not in (None, name):
            lines += ["", f"The run trained model `{params['model']}`; this export uses `{name}`."]
    else:
        lines.append(
            "No run folder (`params.txt` beside `checkpoints/`) was found for the checkpoint: training data "
            "and settings are unknown to this card."
        )
    lines += ["", "## Results", ""]
    if results and results.rows:
        lines += results_section(results.rows, f"`{results.path}`", results.own)
    else:
        lines.append("No measured results were given (`fgclep export --results results.json`).")
    lines += [
        "",
        "## Intended use",
        "",
        (
            "Research on ECG-report representation learning: reproducing and extending FG-CLEP, zero-shot and "
            "linear-probe benchmarks (PTB-XL, CPSC2018, CSN), retrieval experiments, embedding analyses."
        ),
        "",
        "## Limits",
        "",
        "- Research only; not for clinical use or any decision about a patient.",
        (
            "- Results hold for the data and tasks above; other devices, populations, sampling chains and "
            "report styles are untested. Reports are English."
        ),
        (
            "- Input must be the canonical ECG (12 leads by name in the order above, 500 Hz, 10 s, mV); the "
            "transform decimates and normalises it, it does not repair other layouts."
        ),
        "- Scores are similarities, not calibrated diagnostic probabilities.",
        "",
        "## Citation",
        "",
        (
            "The method: Li, Liu, Ding, Liu, Huang, *Fine-Grained ECG-Text Contrastive Learning via Waveform "
            "Understanding Enhancement* (ICML 2025); the software: fgclep-plugin (its CITATION.cff)."
        ),
        "",
    ]
    return "\n".join(lines)
