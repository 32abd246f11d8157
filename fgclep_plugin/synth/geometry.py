"""Heart-vector geometry: electrode lead vectors and the electrode -> 12-lead matrix.

Axes: x points to the patient's left, y inferior (feet), z anterior. A cardiac dipole ``d`` produces the
potential ``r_e . d`` at electrode ``e``; the 12 leads are linear combinations of the 9 electrode potentials
(RA, LA, LL, V1..V6) exactly as an ECG cart forms them, so Einthoven's law (II = I + III) and
aVR + aVL + aVF = 0 hold by construction, for the heart signal and for electrode noise alike.
"""

from __future__ import annotations

import numpy as np

LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
ELECTRODES: tuple[str, ...] = ("RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(LEAD_NAMES)}


def _frontal(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def electrode_vectors() -> np.ndarray:
    """``[9, 3]`` lead vectors of the electrodes (equilateral Einthoven triangle + precordial positions)."""
    limb = [_frontal(-150.0), _frontal(-30.0), _frontal(90.0)]  # RA, LA, LL
    limb = [v / np.sqrt(3.0) for v in limb]  # so that bipolar leads I, II, III have unit lead vectors
    # Precordial electrodes: angle in the transverse plane from +x (left) towards +z (anterior), a small
    # inferior component, and a magnitude that grows near the heart (V2-V4 sit closest).
    angles = np.deg2rad([115.0, 90.0, 60.0, 35.0, 15.0, -5.0])
    mags = np.array([1.1, 2.0, 2.0, 2.2, 1.6, 1.1])
    inferior = np.array([-0.05, 0.0, 0.05, 0.1, 0.15, 0.15])
    prec = [m * np.array([np.cos(a), inf, np.sin(a)]) for a, m, inf in zip(angles, mags, inferior)]
    return np.stack(limb + prec)


def electrode_to_lead_matrix() -> np.ndarray:
    """``[12, 9]`` matrix forming the standard leads from electrode potentials (Wilson terminal for V1-V6)."""
    m = np.zeros((12, 9))
    ra, la, ll = 0, 1, 2
    m[0, la], m[0, ra] = 1, -1  # I
    m[1, ll], m[1, ra] = 1, -1  # II
    m[2, ll], m[2, la] = 1, -1  # III
    m[3, ra], m[3, la], m[3, ll] = 1, -0.5, -0.5  # aVR
    m[4, la], m[4, ra], m[4, ll] = 1, -0.5, -0.5  # aVL
    m[5, ll], m[5, ra], m[5, la] = 1, -0.5, -0.5  # aVF
    for k in range(6):
        m[6 + k, 3 + k] = 1.0
        m[6 + k, :3] = -1.0 / 3.0
    return m


ELECTRODE_VECTORS = electrode_vectors()
LEAD_MATRIX = electrode_to_lead_matrix()
LEAD_VECTORS = LEAD_MATRIX @ ELECTRODE_VECTORS  # [12, 3]: lead i sees dipole d as LEAD_VECTORS[i] . d


def frontal_axis_deg(area_i: float, area_ii: float) -> float:
    """Frontal-plane angle (degrees, clinical convention: +90 = aVF) of a dipole from its lead I and II areas."""
    y = (2.0 * area_ii - area_i) / np.sqrt(3.0)
    return float(np.degrees(np.arctan2(y, area_i)))
