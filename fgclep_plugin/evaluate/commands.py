"""``fgclep retrieve`` and ``fgclep figures``: their command lines. Light to import: the ``fgclep`` command
imports this module to build its parser, and the work modules (:mod:`.retrieval`, :mod:`.figures`) load torch
and open_clip, so each command imports its work module when it runs.
"""

from __future__ import annotations

import argparse

from ..cliargs import SYNTH_FEATURES, add_command, add_model_arguments, add_out_argument, add_run_arguments

RETRIEVE = """Retrieval over a shard set: text -> top-k ECGs, ECG -> top-k reports, Recall@k / precision@k against the
ground truth the set carries, and the retrieved 12-lead ECGs drawn on ECG paper (the paper's Figure 5).

Ground truth, by query kind:

- **report -> ECG** (every distinct report of the set is one query): a hit is any ECG whose report text equals
  the query exactly; several ECGs sharing one report are all hits for it (machine reports repeat).
- **ECG -> report** (every ECG is one query; candidates are the set's distinct reports, so duplicates do not
  compete with themselves): the hit is the ECG's own report text.
- **class -> ECG** (``--label-key``): the query is the class's prompt text, relevant ECGs are those labelled
  with the class; precision@k and Recall@k. On the synthetic split ``--label-key features --prompts
  synth-features`` queries the simulator's canonical feature phrases against the ground-truth features.

Rankings sort by cosine, highest first; equal scores keep the shard order (a stable sort), so results do not
depend on the platform's sort. Chance levels are the exact expectations under a uniformly random ranking.
Embeddings come from :mod:`fgclep_plugin.model.scoring` (the one embedding path: ``embed_shards``).
"""
"""What ``fgclep retrieve`` computes (its help)."""

FIGURES = """Evaluation figures: t-SNE of ECG embeddings coloured by label (the paper's Figure 4) and the semantic
similarity matrix ``S_ij = cos(t_i, t_j)`` of a batch of reports (Figure 3: a random batch and a
normal-vs-abnormal batch), the matrix FNM's target is made of.

t-SNE is scikit-learn's (``init="pca"``, seeded: the same seed gives the same map). Each ECG takes one colour:
its most specific label, i.e. the one of its labels that is rarest in the set ("sinus rhythm, normal ECG" is
coloured "normal ECG"; "sinus rhythm, LVH" is coloured "LVH"). PNGs have a fixed pixel size (figure inches x
dpi) and are written atomically (:func:`fgclep_plugin.ecgdata.plot.save_png`).
"""
"""What ``fgclep figures`` draws (its help)."""


def demo_example(command: str, options: str) -> str:
    """The help's example: ``command`` on the synthetic test split with the demo's stage-1 model, then
    ``options`` (a continuation line)."""
    return (
        "example (synthetic test split, demo model):\n"
        f"  fgclep {command} --data data/synth/test/synth-test-000000.tar --model FGCLEP-ResNet1d18-MiniLM \\\n"
        f"      --checkpoint runs/demo/stage1/checkpoints/epoch_6.pt {options}"
    )


def run_retrieve(args: argparse.Namespace) -> int:
    """``fgclep retrieve``."""
    from .retrieval import run_retrieve  # torch and open_clip: only when the command runs (module docstring)

    return run_retrieve(args)


def run_figures(args: argparse.Namespace) -> int:
    """``fgclep figures``."""
    from .figures import run_figures  # torch and open_clip: only when the command runs (module docstring)

    return run_figures(args)


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep retrieve`` and ``fgclep figures``."""
    what = "text -> top-k ECGs, ECG -> top-k reports, Recall@k, figures of the retrieved ECGs"
    options = f"--label-key features --prompts {SYNTH_FEATURES} \\\n      --query 'atrial fibrillation' --k 10 --out eval/"
    p = add_command(sub, "retrieve", what, RETRIEVE, epilog=demo_example("retrieve", options))
    add_model_arguments(p, "shards, e.g. 'shards/ludb/ludb-test-000000.tar'")
    p.add_argument(
        "--query", action="append", default=[], metavar="TEXT", help="text -> top-k ECGs (repeatable)"
    )
    p.add_argument(
        "--ecg", action="append", default=[], metavar="KEY", help="ECG __key__ -> top-k reports (repeatable)"
    )
    p.add_argument("--k", type=int, default=10, help="cut-off of the rankings and of Recall@k / precision@k")
    p.add_argument("--label-key", default=None, help="class queries over json labels[KEY] (precision@k)")
    p.add_argument(
        "--prompts",
        default=None,
        help=f"class name -> query text: a JSON file, or '{SYNTH_FEATURES}' (the simulator's feature phrases)",
    )
    add_out_argument(p, "folder for retrieval.json and the figures (PNG)", required=False)
    p.add_argument("--plot-k", type=int, default=3, help="ECGs drawn per text query (0: no figure)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the figures (dots per inch)")
    add_run_arguments(p, 64, "ECGs per encoder batch", "torch seed (the random weights of --checkpoint none)")
    p.set_defaults(func=run_retrieve)

    what = "t-SNE of ECG embeddings by label, report similarity heat maps (PNG)"
    options = "--label-key diagnoses --normal-class normal_ecg --out eval/"
    p = add_command(sub, "figures", what, FIGURES, epilog=demo_example("figures", options))
    add_model_arguments(p, "labelled shards")
    p.add_argument("--label-key", required=True, help="colour the t-SNE by json labels[KEY]")
    p.add_argument(
        "--normal-class",
        default=None,
        help="class of labels[KEY] that marks a normal ECG; adds the normal-vs-abnormal similarity batch",
    )
    add_out_argument(p, "folder for the PNGs and figures.json")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    p.add_argument("--max-points", type=int, default=3000, help="t-SNE of a seeded subset of larger sets")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (dots per inch)")
    seed_help = "t-SNE, batch draws, the random weights of --checkpoint none"
    add_run_arguments(p, 24, "reports per similarity batch", seed_help, batch_alias=True)
    p.set_defaults(func=run_figures)
