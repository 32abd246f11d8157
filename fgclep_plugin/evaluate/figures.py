"""Evaluation figures, the work of ``fgclep figures``: t-SNE of ECG embeddings coloured by label (the paper's
Figure 4) and the semantic similarity matrix of a batch of reports (Figure 3). What they show and how they are
made: :data:`.commands.FIGURES` (the command's help).

matplotlib, scikit-learn's t-SNE and threadpoolctl are imported where a figure is made, not at module import:
``fgclep eval`` and the demo import this module whether or not they draw figures (start-up time).
"""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ecgdata.labels import labels_from_meta
from ..ecgdata.plot import save_png
from ..ecgdata.shards import atomic_write_json
from ..model.scoring import embed_shards, embed_texts, load_model, similarity

OTHER = "other"
UNLABELLED = "no label"


def _pyplot():
    import matplotlib  # start-up time (module docstring)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


# ----------------------------------------------------------------------------------------------- t-SNE


def tsne(emb: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE ``[N, 2]`` of embeddings ``[N, D]`` (scikit-learn, PCA initialisation, ``random_state=seed``:
    the same input gives the same map); the perplexity is lowered to ``(N - 1) / 3`` for small sets. Needs
    N >= 4. Runs on one OpenMP thread: Barnes-Hut's threads spin on a busy machine (measured 10-15x slower
    on 2 shared cores)."""
    from sklearn.manifold import TSNE  # start-up time (module docstring)
    from threadpoolctl import threadpool_limits

    emb = np.asarray(emb, dtype=np.float32)
    if len(emb) < 4:
        raise ValueError(f"t-SNE needs at least 4 ECGs, got {len(emb)}")
    perplexity = min(perplexity, (len(emb) - 1) / 3)
    with threadpool_limits(1, user_api="openmp"):
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
        ).fit_transform(emb)


def primary_labels(labels: Sequence[Sequence[str]]) -> list[str]:
    """One label per sample: the sample's label that is rarest in the whole set (ties: alphabetical);
    ``"no label"`` for a sample without labels."""
    counts = Counter(c for lab in labels for c in set(lab))
    return [min(set(lab), key=lambda c: (counts[c], c)) if lab else UNLABELLED for lab in labels]


def plot_tsne(
    xy: np.ndarray, labels: Sequence[str], path: str | Path, title: str, max_classes: int = 12, dpi: int = 100
) -> Path:
    """Scatter of a 2-D map with one colour per label (the ``max_classes`` most frequent; the others grey as
    "other"), legend with counts outside the plot; PNG of 11 x 7.5 inches."""
    plt = _pyplot()
    counts = Counter(labels)
    shown = [c for c, _ in counts.most_common() if c not in (UNLABELLED,)][:max_classes]
    tab = plt.get_cmap("tab20").colors  # dark shades first, their light partners after: neighbours differ
    palette = plt.get_cmap("tab10").colors if len(shown) <= 10 else tab[0::2] + tab[1::2]
    fig = plt.figure(figsize=(11, 7.5), layout="constrained")
    ax = fig.add_subplot()
    groups = [(c, palette[i % len(palette)]) for i, c in enumerate(shown)]
    rest = [c for c in counts if c not in shown]
    lab = np.asarray(labels, dtype=object)
    for name, color, size in [(OTHER if rest else None, (0.75, 0.75, 0.75, 1.0), 8)] + [
        (c, col, 12) for c, col in groups
    ]:
        if name is None:
            continue
        mask = np.isin(lab, rest) if name == OTHER else lab == name
        n = int(mask.sum())
        ax.scatter(
            xy[mask, 0], xy[mask, 1], s=size, color=color, label=f"{name} ({n})", linewidths=0, alpha=0.85
        )
    ax.set_title(textwrap.fill(title, 100), fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: names[i].startswith(OTHER + " ("))  # "other" last
    ax.legend(
        [handles[i] for i in order],
        [names[i] for i in order],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=9,
        markerscale=1.8,
        frameon=False,
    )
    return save_png(fig, path, dpi)


# ------------------------------------------------------------------------------- similarity matrices


def random_batch(n_samples: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct sample indices out of ``n_samples``, drawn with ``seed`` (sorted)."""
    if size > n_samples:
        raise ValueError(f"a batch of {size} needs at least {size} samples, the set has {n_samples}")
    return np.sort(np.random.default_rng(seed).choice(n_samples, size, replace=False))


def normal_abnormal_batch(is_normal: Sequence[bool], size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``size // 2`` normal then ``size - size // 2`` abnormal sample indices (seeded draw), and the number of
    normal ones; ``ValueError`` naming the shortfall when the set has too few of either."""
    is_normal = np.asarray(is_normal, dtype=bool)
    rng = np.random.default_rng(seed)
    normal, abnormal = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
    n_norm, n_abn = size // 2, size - size // 2
    if len(normal) < n_norm or len(abnormal) < n_abn:
        raise ValueError(
            f"a normal-vs-abnormal batch of {size} needs {n_norm} normal and {n_abn} abnormal ECGs; "
            f"the set has {len(normal)} and {len(abnormal)}"
        )
    picked = np.concatenate(
        [
            np.sort(rng.choice(normal, n_norm, replace=False)),
            np.sort(rng.choice(abnormal, n_abn, replace=False)),
        ]
    )
    return picked, n_norm


def report_similarity(lm, texts: Sequence[str]) -> np.ndarray:
    """``S [n, n]``, ``S_ij = cos(t_i, t_j)`` of the model's text embeddings of ``texts`` (FNM's target)."""
    t = embed_texts(lm.model, lm.tokenizer, list(texts), device=lm.device, precision=lm.precision)
    return similarity(t, t).numpy()


def plot_similarity(
    s: np.ndarray,
    texts: Sequence[str],
    path: str | Path,
    title: str,
    split: int | None = None,
    dpi: int = 100,
) -> Path:
    """Heat map of a report similarity matrix, each row labelled with its report (wrapped on two lines) and
    index; ``split`` draws the boundary between the first ``split`` reports and the rest and names the two
    groups above the map. PNG of 15 x 10 inches."""
    plt = _pyplot()
    n = len(texts)
    fig = plt.figure(figsize=(15, 10), layout="constrained")
    ax = fig.add_subplot()
    low = float(
        np.floor(s.min() * 20) / 20
    )  # the scale spans the batch's range: text towers rarely go below 0.5
    im = ax.imshow(s, cmap="viridis", vmin=min(low, 0.95), vmax=1.0, interpolation="nearest")
    size = 7 if n <= 32 else 5

    def row_label(i: int, t: str) -> str:
        return "\n".join(textwrap.wrap(textwrap.shorten(t, 120, placeholder=" ..."), 62)[:2]) + f"  {i:>2}"

    ax.set_yticks(range(n), [row_label(i, t) for i, t in enumerate(texts)], fontsize=size)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=size)
    ax.set_xlabel("report j")
    ax.set_ylabel("report i")
    if split is not None and 0 < split < n:
        for f in (ax.axhline, ax.axvline):
            f(split - 0.5, color="white", lw=1.5)
        top = ax.secondary_xaxis("top")
        top.set_xticks(
            [split / 2 - 0.5, (split + n) / 2 - 0.5], [f"normal ({split})", f"abnormal ({n - split})"]
        )
        top.tick_params(length=0, labelsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="S_ij = cos(t_i, t_j)")
    ax.set_title(textwrap.fill(title, 100), fontsize=11)
    return save_png(fig, path, dpi)


# ---------------------------------------------------------------------------------------------- command


def make_figures(
    lm,
    urls: str,
    out: str | Path,
    label_key: str,
    normal_class: str | None = None,
    batch: int = 24,
    seed: int = 0,
    perplexity: float = 30.0,
    max_points: int = 3000,
    dpi: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """The t-SNE map and the two similarity heat maps of a shard set into ``out``; returns a manifest
    (paths, sizes, the batches' keys)."""
    out = Path(out)
    es = embed_shards(lm, urls, progress="ECGs" if progress else False)
    labels = [labels_from_meta(m, label_key) for m in es.metas]
    if not any(labels):
        raise ValueError(f"no sample of {urls} has labels[{label_key!r}]")
    n = len(es.keys)
    pts = np.arange(n) if n <= max_points else random_batch(n, max_points, seed)
    xy = tsne(es.embeddings[pts], seed=seed, perplexity=perplexity)
    who = f"{lm.name}" + (f", {Path(lm.checkpoint).name}" if lm.checkpoint else ", untrained")
    manifest: dict[str, Any] = {
        "model": lm.name,
        "checkpoint": lm.checkpoint,
        "device": str(lm.device),
        "precision": lm.precision,
        "data": urls,
        "seed": seed,
    }
    tsne_path = plot_tsne(
        xy,
        primary_labels([labels[i] for i in pts]),
        out / f"tsne_{label_key.replace(' ', '_')}.png",
        f"t-SNE of {len(pts)} ECG embeddings ({who}), coloured by the rarest of each ECG's labels[{label_key}]",
        dpi=dpi,
    )
    manifest["tsne"] = {"path": str(tsne_path), "points": len(pts), "label_key": label_key}
    idx = random_batch(n, min(batch, n), seed)
    texts = [es.texts[i] for i in idx]
    distinct = len(set(texts))
    path = plot_similarity(
        report_similarity(lm, texts),
        texts,
        out / "similarity_random.png",
        f"Report similarity S_ij = cos(t_i, t_j), random batch of {len(idx)} ({distinct} distinct reports; {who})",
        dpi=dpi,
    )
    manifest["similarity_random"] = {"path": str(path), "keys": [es.keys[i] for i in idx]}
    if normal_class:
        idx, split = normal_abnormal_batch([normal_class in lab for lab in labels], batch, seed)
        texts = [es.texts[i] for i in idx]
        path = plot_similarity(
            report_similarity(lm, texts),
            texts,
            out / "similarity_normal_abnormal.png",
            f"Report similarity, {split} normal ({label_key} has {normal_class}) vs {len(idx) - split} abnormal "
            f"({who})",
            split=split,
            dpi=dpi,
        )
        manifest["similarity_normal_abnormal"] = {
            "path": str(path),
            "keys": [es.keys[i] for i in idx],
            "normal": split,
        }
    return manifest


def run_figures(args: argparse.Namespace) -> int:
    """``fgclep figures``."""
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.checkpoint, args.device, args.precision, args.workers)
    manifest = make_figures(
        lm,
        args.data,
        args.out,
        args.label_key,
        args.normal_class,
        args.batch_size,
        args.seed,
        args.perplexity,
        args.max_points,
        args.dpi,
        progress=not args.quiet,
    )
    atomic_write_json(Path(args.out) / "figures.json", manifest)
    for name in ("tsne", "similarity_random", "similarity_normal_abnormal"):
        if name in manifest:
            print(f"{name}: {manifest[name]['path']}")
    return 0
