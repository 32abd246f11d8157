"""Machine-statement style reports ("sinus rhythm. left bundle branch block. abnormal ecg.").

A report states the diagnoses with varied phrasing, mostly *without* the waveform features behind them (as
real ECG-cart and clinician reports do); each present feature (other than the upright sinus P wave) is stated
with probability ``p_mention``. The default is set from real reports (docs/synth_corpus.md): of PTB-XL's
reports of ECGs without a NORM code, 49 % state at least one waveform feature (English ones 66 %, German
43 %; all PTB-XL reports 34 %; the FG-CLEP authors: about 45 % of MIMIC-IV-ECG reports); with
``DEFAULT_P_MENTION = 0.3`` 52 % of the synthetic non-normal reports do (28 % of all; synthetic normal ECGs
have almost no feature to state), and about two in three present features stay unstated.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import DIAGNOSES, FEATURES

DEFAULT_P_MENTION = 0.3

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
    p_mention: float = DEFAULT_P_MENTION,
) -> tuple[str, list[str]]:
    """Report text and the names of the features it mentions (each present feature with ``p_mention``)."""
    if not 0.0 <= p_mention <= 1.0:
        raise ValueError(f"p_mention must be in [0, 1], got {p_mention}")
    dx = [d for d in diagnoses if d != "normal_ecg"]
    dx.sort(key=lambda d: ORDER.index(DIAGNOSES[d]["group"]))
    statements = []
    for d in dx:
        phrases = DIAGNOSES[d]["phrases"]
        statements.append(str(phrases[rng.integers(len(phrases))]))
    mentioned: list[str] = []
    mentionable = [f for f in features if f != "sinus_p"]
    for name in mentionable:
        if rng.random() < p_mention:
            mentioned.append(str(name))
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
