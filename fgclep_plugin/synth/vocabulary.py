"""The clinical vocabulary of the synthetic corpus, as data.

``FEATURES``: waveform features with their canonical short phrase (stage 2 matches proposed features against
these phrases) and how their presence is decided: ``"measured"`` features are read off the generated signal's
ground truth with the clinical criterion in ``criterion`` (so a feature is labelled exactly when it is in the
signal, planned or not), ``"planned"`` ones (rhythm and conduction morphology) are true by construction.

``DIAGNOSES``: each diagnosis with its prevalence, a group (diagnoses of one exclusive group never co-occur),
the features that *may* accompany it with their probability (so one diagnosis is realised by different feature
sets), and report phrasings in the style of ECG-cart statements.
"""

from __future__ import annotations

TERRITORY_PHRASE = {"inferior": "II, III, aVF", "anterior": "V1-V4", "lateral": "I, aVL, V5, V6"}

FEATURES: dict[str, dict] = {
    "slow_rate": {"phrase": "heart rate below 60 bpm", "kind": "measured", "criterion": "hr < 60"},
    "fast_rate": {"phrase": "heart rate above 100 bpm", "kind": "measured", "criterion": "hr > 100"},
    "sinus_p": {"phrase": "upright P wave before every QRS complex", "kind": "planned"},
    "absent_p": {"phrase": "absent P waves", "kind": "planned"},
    "irregular_rr": {"phrase": "irregularly irregular RR intervals", "kind": "planned"},
    "fibrillatory_waves": {"phrase": "fibrillatory baseline waves", "kind": "planned"},
    "flutter_waves": {"phrase": "sawtooth flutter waves in II, III, aVF", "kind": "planned"},
    "pacing_spikes": {"phrase": "pacemaker spikes", "kind": "planned"},
    "premature_wide_beats": {"phrase": "premature wide QRS complexes without P wave", "kind": "planned"},
    "premature_p": {"phrase": "premature beats with abnormal P waves", "kind": "planned"},
    "long_pr": {"phrase": "prolonged PR interval", "kind": "measured", "criterion": "PR > 200 ms"},
    "wide_qrs": {"phrase": "wide QRS complex", "kind": "measured", "criterion": "QRS >= 120 ms"},
    "long_qt": {
        "phrase": "prolonged QT interval",
        "kind": "measured",
        "criterion": "QTc (Fridericia) > 460 ms, QRS < 120 ms",
    },
    "rsr_v1": {"phrase": "rSR' pattern in V1", "kind": "planned"},
    "wide_s_lateral": {"phrase": "wide S wave in I and V6", "kind": "planned"},
    "notched_r_lateral": {"phrase": "broad notched R wave in I, aVL, V5, V6", "kind": "planned"},
    "absent_septal_q": {"phrase": "absent septal Q waves in I, V5, V6", "kind": "planned"},
    "high_voltage": {
        "phrase": "increased QRS voltage in precordial leads",
        "kind": "measured",
        "criterion": "SV1 + max(RV5, RV6) >= 3.5 mV",
    },
    "tall_r_lateral": {
        "phrase": "tall R waves in V5, V6",
        "kind": "measured",
        "criterion": "max(RV5, RV6) > 2.6 mV",
    },
    "deep_s_v1v2": {
        "phrase": "deep S waves in V1, V2",
        "kind": "measured",
        "criterion": "min(SV1, SV2) <= -2.5 mV",
    },
    "low_voltage_limb": {
        "phrase": "low QRS voltage in limb leads",
        "kind": "measured",
        "criterion": "QRS peak-to-peak < 0.5 mV in every limb lead",
    },
    "negative_qrs_inferior": {
        "phrase": "predominantly negative QRS in II, III, aVF",
        "kind": "measured",
        "criterion": "QRS max + min < 0 in II and aVF",
    },
    "negative_qrs_lead_i": {
        "phrase": "predominantly negative QRS in lead I",
        "kind": "measured",
        "criterion": "QRS max + min < 0 in I",
    },
    "poor_r_progression": {
        "phrase": "poor R wave progression in V1-V4",
        "kind": "measured",
        "criterion": "R in V3 < 0.3 mV",
    },
    "u_waves": {"phrase": "prominent U waves", "kind": "planned"},
}
for _t, _leads in TERRITORY_PHRASE.items():
    FEATURES[f"q_{_t}"] = {
        "phrase": f"pathological Q waves in {_leads}",
        "kind": "measured",
        "criterion": f"Q >= {20 if _t == 'anterior' else 30} ms and <= -0.1 mV in >= 2 territory leads",
    }
    FEATURES[f"ste_{_t}"] = {
        "phrase": f"ST elevation in {_leads}",
        "kind": "measured",
        "criterion": "ST at J >= 0.1 mV in >= 2 territory leads",
    }
    FEATURES[f"std_{_t}"] = {
        "phrase": f"ST depression in {_leads}",
        "kind": "measured",
        "criterion": "ST at J <= -0.05 mV in >= 2 territory leads",
    }
    FEATURES[f"twi_{_t}"] = {
        "phrase": f"T wave inversion in {_leads}",
        "kind": "measured",
        "criterion": "T <= -0.1 mV in >= 2 territory leads",
    }
    if _t != "anterior":
        FEATURES[f"flat_t_{_t}"] = {
            "phrase": f"flat T waves in {_leads}",
            "kind": "measured",
            "criterion": "|T| < 0.1 mV in >= 2 territory leads, not inverted",
        }

# Rhythm diagnoses form one exclusive group; "conduction" too (one bundle-branch pattern at most).
DIAGNOSES: dict[str, dict] = {
    "sinus_rhythm": {
        "prevalence": 0.80,
        "group": "rhythm",
        "features": {"sinus_p": 1.0},
        "phrases": ["sinus rhythm", "normal sinus rhythm"],
    },
    "sinus_bradycardia": {
        "prevalence": 0.09,
        "group": "rhythm",
        "features": {"slow_rate": 1.0, "sinus_p": 1.0},
        "phrases": ["sinus bradycardia", "marked sinus bradycardia"],
    },
    "sinus_tachycardia": {
        "prevalence": 0.05,
        "group": "rhythm",
        "features": {"fast_rate": 1.0, "sinus_p": 1.0},
        "phrases": ["sinus tachycardia"],
    },
    "atrial_fibrillation": {
        "prevalence": 0.045,
        "group": "rhythm",
        "features": {"absent_p": 1.0, "irregular_rr": 1.0, "fibrillatory_waves": 0.7, "fast_rate": 0.3},
        "phrases": [
            "atrial fibrillation",
            "atrial fibrillation with controlled ventricular response",
            "afib",
        ],
    },
    "atrial_flutter": {
        "prevalence": 0.01,
        "group": "rhythm",
        "features": {"flutter_waves": 1.0, "absent_p": 1.0, "fast_rate": 0.5},
        "phrases": ["atrial flutter", "atrial flutter with variable a-v block"],
    },
    "paced_rhythm": {
        "prevalence": 0.005,
        "group": "rhythm",
        "features": {"pacing_spikes": 1.0, "wide_qrs": 1.0},
        "phrases": ["electronic ventricular pacemaker", "av dual-paced rhythm", "paced rhythm"],
    },
    "first_degree_av_block": {
        "prevalence": 0.05,
        "group": "av",
        "features": {"long_pr": 1.0},
        "phrases": ["1st degree av block", "first degree a-v block", "with 1st degree a-v block"],
    },
    "rbbb": {
        "prevalence": 0.035,
        "group": "conduction",
        "features": {"wide_qrs": 1.0, "rsr_v1": 0.85, "wide_s_lateral": 0.8, "twi_anterior": 0.4},
        "phrases": ["right bundle branch block", "rbbb", "complete right bundle branch block"],
    },
    "lbbb": {
        "prevalence": 0.015,
        "group": "conduction",
        "features": {
            "wide_qrs": 1.0,
            "notched_r_lateral": 0.7,
            "absent_septal_q": 1.0,
            "std_lateral": 0.6,
            "twi_lateral": 0.7,
        },
        "phrases": ["left bundle branch block", "lbbb", "complete left bundle branch block"],
    },
    "ivcd": {
        "prevalence": 0.015,
        "group": "conduction",
        "features": {"wide_qrs": 1.0},
        "phrases": [
            "nonspecific intraventricular conduction delay",
            "intraventricular conduction delay",
            "ivcd",
        ],
    },
    "lvh": {
        "prevalence": 0.05,
        "group": "lvh",
        "features": {
            "high_voltage": 0.85,
            "tall_r_lateral": 0.5,
            "deep_s_v1v2": 0.4,
            "std_lateral": 0.35,
            "twi_lateral": 0.35,
        },
        "phrases": [
            "left ventricular hypertrophy",
            "lvh",
            "voltage criteria for left ventricular hypertrophy",
            "left ventricular hypertrophy with repolarization abnormality",
        ],
    },
    "low_voltage": {
        "prevalence": 0.02,
        "group": "voltage",
        "features": {"low_voltage_limb": 1.0},
        "phrases": ["low qrs voltages in limb leads", "low voltage qrs", "low voltage"],
    },
    "left_axis_deviation": {
        "prevalence": 0.07,
        "group": "axis",
        "features": {"negative_qrs_inferior": 1.0},
        "phrases": ["left axis deviation", "leftward axis"],
    },
    "right_axis_deviation": {
        "prevalence": 0.02,
        "group": "axis",
        "features": {"negative_qrs_lead_i": 1.0},
        "phrases": ["right axis deviation", "rightward axis"],
    },
    "inferior_mi_old": {
        "prevalence": 0.03,
        "group": "mi",
        "features": {"q_inferior": 0.9, "twi_inferior": 0.4, "flat_t_inferior": 0.2},
        "phrases": [
            "inferior infarct, age undetermined",
            "old inferior myocardial infarction",
            "possible inferior infarct - age undetermined",
        ],
    },
    "anterior_mi_old": {
        "prevalence": 0.02,
        "group": "mi",
        "features": {"q_anterior": 0.8, "poor_r_progression": 0.6, "twi_anterior": 0.4},
        "phrases": [
            "anterior infarct, age undetermined",
            "old anterior myocardial infarction",
            "anteroseptal infarct, age undetermined",
        ],
    },
    "lateral_mi_old": {
        "prevalence": 0.01,
        "group": "mi",
        "features": {"q_lateral": 0.85, "twi_lateral": 0.4},
        "phrases": ["lateral infarct, age undetermined", "old lateral myocardial infarction"],
    },
    "inferior_mi_acute": {
        "prevalence": 0.008,
        "group": "mi",
        "features": {"ste_inferior": 1.0, "q_inferior": 0.4},
        "phrases": [
            "inferior infarct, acute",
            "acute inferior myocardial infarction",
            "inferior injury pattern, acute mi",
        ],
    },
    "anterior_mi_acute": {
        "prevalence": 0.007,
        "group": "mi",
        "features": {"ste_anterior": 1.0, "q_anterior": 0.4},
        "phrases": [
            "anterior infarct, acute",
            "acute anterior myocardial infarction",
            "** acute mi / stemi **",
        ],
    },
    "lateral_mi_acute": {
        "prevalence": 0.004,
        "group": "mi",
        "features": {"ste_lateral": 1.0, "q_lateral": 0.3},
        "phrases": ["lateral infarct, acute", "acute lateral myocardial infarction"],
    },
    "nonspecific_st_t": {
        "prevalence": 0.06,
        "group": "stt",
        "features": {"flat_t_lateral": 0.4, "flat_t_inferior": 0.3, "std_lateral": 0.3, "twi_inferior": 0.15},
        "phrases": [
            "nonspecific st-t abnormality",
            "nonspecific st and t wave abnormality",
            "nonspecific t wave abnormality",
        ],
    },
    "long_qt": {
        "prevalence": 0.03,
        "group": "qt",
        "features": {"long_qt": 1.0, "u_waves": 0.15},
        "phrases": ["prolonged qt", "long qt interval", "prolonged qt interval"],
    },
    "pvcs": {
        "prevalence": 0.04,
        "group": "pvc",
        "features": {"premature_wide_beats": 1.0},
        "phrases": [
            "with premature ventricular complexes",
            "pvc(s)",
            "with occasional ventricular premature complexes",
        ],
    },
    "pacs": {
        "prevalence": 0.03,
        "group": "pac",
        "features": {"premature_p": 1.0},
        "phrases": [
            "with premature atrial complexes",
            "pac(s)",
            "with occasional supraventricular premature complexes",
        ],
    },
    "normal_ecg": {"prevalence": 0.0, "group": "summary", "features": {}, "phrases": ["normal ecg"]},
}

# Rhythms on which a diagnosis cannot be made (no P waves, paced) or which override it.
REQUIRES_SINUS = {"first_degree_av_block", "pacs"}
EXCLUDED_WHEN_PACED = {
    "rbbb",
    "lbbb",
    "ivcd",
    "lvh",
    "left_axis_deviation",
    "right_axis_deviation",
    "inferior_mi_old",
    "anterior_mi_old",
    "lateral_mi_old",
    "inferior_mi_acute",
    "anterior_mi_acute",
    "lateral_mi_acute",
    "nonspecific_st_t",
    "low_voltage",
}
# Diagnoses that leave an ECG "normal" (with the rhythm statement alone).
NORMAL_RHYTHMS = {"sinus_rhythm"}
BORDERLINE = {
    "sinus_bradycardia",
    "sinus_tachycardia",
    "first_degree_av_block",
    "left_axis_deviation",
    "pacs",
    "low_voltage",
}


def feature_phrase(name: str) -> str:
    """Canonical phrase of a feature; KeyError names unknown features."""
    try:
        return FEATURES[name]["phrase"]
    except KeyError:
        raise KeyError(f"unknown waveform feature {name!r}") from None


def feature_by_phrase() -> dict[str, str]:
    """Lower-cased canonical phrase -> feature name (for matching proposed features against ground truth)."""
    return {v["phrase"].lower(): k for k, v in FEATURES.items()}
