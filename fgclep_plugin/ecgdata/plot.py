"""A 12-lead ECG drawn the clinical way: pink millimetre grid, 25 mm/s, 10 mm/mV, 3x4 layout + lead II strip.

Coordinates are millimetres of paper, so the grid is a true 1 mm / 5 mm grid at any figure size
(``paper_size_mm`` gives the size to make an axes for a 1:1 print). :func:`save_png` writes any figure
atomically at its own pixel size.

matplotlib is imported where a figure is drawn, not at module import: the ``fgclep`` command imports the modules
that draw in order to build its parser (start-up time).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .shards import atomic_write_bytes

LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
SPEED_MM_S = 25.0
GAIN_MM_MV = 10.0
ROW_MM = 32.5  # vertical spacing between rows (mm)
CAL_MM = 8.0  # room for the 1 mV calibration pulse at the left
MINOR_COLOR = "#f6c9c9"
MAJOR_COLOR = "#e58a8a"


def paper_size_mm(seconds: float = 10.0) -> tuple[float, float]:
    """(width, height) in mm of the drawing for ``seconds`` of signal."""
    return CAL_MM + seconds * SPEED_MM_S, ROW_MM * (len(LAYOUT) + 1) + 5.0


def _grid(ax, width: float, height: float) -> None:
    from matplotlib.collections import LineCollection  # start-up time (module docstring)

    for step, color, lw in ((1.0, MINOR_COLOR, 0.25), (5.0, MAJOR_COLOR, 0.6)):
        xs = np.arange(0.0, width + 1e-6, step)
        ys = np.arange(0.0, height + 1e-6, step)
        segs = [((x, 0.0), (x, height)) for x in xs] + [((0.0, y), (width, y)) for y in ys]
        ax.add_collection(LineCollection(segs, colors=color, linewidths=lw, zorder=0))


def _index_by_name(lead_names: Sequence[str]) -> dict[str, int]:
    return {str(n).lower(): i for i, n in enumerate(lead_names)}


def plot_ecg12(
    signal: np.ndarray,
    fs: float,
    lead_names: Sequence[str],
    ax=None,
    title: str | None = None,
    seconds: float = 10.0,
):
    """Draw a 12-lead ECG (``signal [n_leads, n]`` in mV) into ``ax`` (a new figure if None); returns ``ax``.

    Leads are found by name (case-insensitive); a missing lead raises KeyError naming it. Each lead is drawn
    around its median over the record (DC offsets removed, as a cart's baseline filter does): DC-coupled
    recordings (CODE-15 leads sit up to ~10 mV off zero) would otherwise run across the neighbouring rows.
    """
    import matplotlib.pyplot as plt  # start-up time (module docstring)

    width, height = paper_size_mm(seconds)
    if ax is None:
        _, ax = plt.subplots(figsize=(width / 25.4, height / 25.4))
    idx = _index_by_name(lead_names)
    for row in LAYOUT:
        for name in row:
            if name.lower() not in idx:
                raise KeyError(f"lead {name} not in the signal's leads {list(lead_names)}")
    _grid(ax, width, height)
    n_seg = round(seconds / 4 * fs)
    rows = [*LAYOUT, (RHYTHM_LEAD,)]
    for r, row in enumerate(rows):
        base = height - ROW_MM * (r + 0.5) - 2.0
        # calibration pulse: 1 mV (10 mm) high, 0.2 s (5 mm) wide
        ax.plot(
            [0.5, 1.5, 1.5, 6.5, 6.5, 7.5],
            [base, base, base + GAIN_MM_MV, base + GAIN_MM_MV, base, base],
            color="black",
            lw=0.8,
        )
        seg_len = n_seg if len(row) > 1 else round(seconds * fs)
        for c, name in enumerate(row):
            start = c * n_seg
            lead = np.asarray(signal[idx[name.lower()]], dtype=float)
            x = lead[start : start + seg_len] - np.nanmedian(lead)
            t_mm = CAL_MM + (start + np.arange(len(x))) / fs * SPEED_MM_S
            ax.plot(t_mm, base + x * GAIN_MM_MV, color="black", lw=0.6)
            ax.text(t_mm[0] + 1.0, base + 9.0, name, fontsize=7, ha="left", va="bottom")
            if c > 0:  # lead-change marker
                ax.plot([t_mm[0], t_mm[0]], [base - 3.0, base + 3.0], color="black", lw=0.6)
    ax.set_xlim(0.0, width)
    ax.set_ylim(0.0, height)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    label = f"{SPEED_MM_S:g} mm/s, {GAIN_MM_MV:g} mm/mV"
    ax.set_title(f"{title}  ({label})" if title else label, fontsize=9, loc="left")
    return ax


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG at its own size (no tight bounding box: inches x ``dpi`` pixels), write it
    atomically to ``path`` and close the figure."""
    import matplotlib.pyplot as plt  # start-up time (module docstring)

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
