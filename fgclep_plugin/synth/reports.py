"""Machine-statement style reports ("sinus rhythm. left bundle branch block. abnormal ecg.").

A report states the diagnoses with varied phrasing, mostly *without* the waveform features behind them (as
real ECG-cart and clinician reports do); now and then it mentions one present feature.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import DIAGNOSES, FEATURES

# Statement order of an ECG cart: rhythm, AV conduction, ventricular conduction, axis, voltage, infarcts,
# repolarisation, QT, ectopy.
ORDER = ("rhythm", "av", "conduction", "axis", "voltage", "lvh", "mi", "stt", "qt", "pvc", "pac")

# Alternative wordings of some feature phrases (the canonical phrase is always one of the choices).
FEATURE_WORDINGS: dict[str, list[str]] = {
    "long_pr": ["pr interval prolonged", "prolonged pr"],
    "wide_qrs": ["qrs widened", "broad qrs complexes"],
    "long_qt": ["qt interval prolonged", "prolonged qtc"],
    "rsr_v1": ["rsr' in v1", "rsr' complex in lead v1"],
    "absent_p": ["no p waves seen", "p waves not identified"],
    "irregular_rr": ["irregular ventricular rhythm"],
    "low_voltage_limb": ["small qrs amplitudes in limb leads"],
    "poor_r_progression": ["poor r-wave progression"],
}


def feature_wording(name: str, rng: np.random.Generator) -> str:
    """The canonical phrase or one of its alternative wordings, lower-cased like the rest of a report."""
    options = [FEATURES[name]["phrase"]] + FEATURE_WORDINGS.get(name, [])
    return str(options[rng.integers(len(options))]).lower()


def make_report(
    diagnoses: list[str],
    features: list[str],
    ecg_class: str,
    rng: np.random.Generator,
    p_mention: float = 0.15,
) -> tuple[str, list[str]]:
    """Report text and the names of the features it mentions."""
    dx = [d for d in diagnoses if d != "normal_ecg"]
    dx.sort(key=lambda d: ORDER.index(DIAGNOSES[d]["group"]))
    statements = []
    for d in dx:
        phrases = DIAGNOSES[d]["phrases"]
        statements.append(str(phrases[rng.integers(len(phrases))]))
    mentioned: list[str] = []
    mentionable = [f for f in features if f != "sinus_p"]
    if mentionable and rng.random() < p_mention:
        name = str(mentionable[rng.integers(len(mentionable))])
        mentioned.append(name)
        statements.insert(int(rng.integers(1, len(statements) + 1)), feature_wording(name, rng))
    r = rng.random()
    if ecg_class == "normal":
        statements.append("normal ecg" if r < 0.9 else "within normal limits")
    elif ecg_class == "borderline":
        if r < 0.8:
            statements.append("borderline ecg")
        elif r < 0.9:
            statements.append("otherwise normal ecg")
    elif r < 0.9:
        statements.append("abnormal ecg")
    return ". ".join(statements) + ".", mentioned
