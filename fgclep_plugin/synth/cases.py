"""From diagnoses to a rendered ECG with its ground-truth features.

``sample_diagnoses`` draws a diagnosis set with the vocabulary's prevalences; ``plan_spec`` draws which of the
linked features to realise and turns them into simulator parameters (with record-to-record variation);
``label_features`` reads the features off the rendered ground truth (measured criteria) and the plan (rhythm
and conduction morphology). ``simulate_case(seed)`` runs all three.
"""

from __future__ import annotations

import numpy as np

from .simulator import TERRITORY_LEADS, EcgSpec, NoiseSpec, render
from .vocabulary import BORDERLINE, DIAGNOSES, EXCLUDED_WHEN_PACED, FEATURES, REQUIRES_SINUS

TERRITORIES = tuple(TERRITORY_LEADS)


def sample_diagnoses(rng: np.random.Generator) -> list[str]:
    """A diagnosis set: one rhythm, then each other group independently by prevalence (one per group)."""
    rhythms = [k for k, v in DIAGNOSES.items() if v["group"] == "rhythm"]
    p = np.array([DIAGNOSES[k]["prevalence"] for k in rhythms])
    out = [rhythms[rng.choice(len(rhythms), p=p / p.sum())]]
    groups: dict[str, list[str]] = {}
    for k, v in DIAGNOSES.items():
        if v["group"] not in ("rhythm", "summary"):
            groups.setdefault(v["group"], []).append(k)
    for members in groups.values():
        for k in rng.permutation(members):
            if rng.random() < DIAGNOSES[k]["prevalence"]:
                out.append(str(k))
                break
    sinus = out[0] in ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia")
    out = [d for d in out if sinus or d not in REQUIRES_SINUS]
    if out[0] == "paced_rhythm":
        out = [d for d in out if d not in EXCLUDED_WHEN_PACED]
    if out == ["sinus_rhythm"]:
        out.append("normal_ecg")
    return out


def _planned_features(diagnoses: list[str], rng: np.random.Generator) -> set[str]:
    planned: set[str] = set()
    for d in diagnoses:
        links = DIAGNOSES[d]["features"]
        chosen = {f for f, p in links.items() if rng.random() < p}
        if links and not chosen:  # a diagnosis always leaves some trace, though not always the same one
            chosen = {str(rng.choice(sorted(links)))}
        planned |= chosen
    return planned


def plan_spec(diagnoses: list[str], rng: np.random.Generator) -> tuple[EcgSpec, set[str]]:
    """Simulator parameters realising ``diagnoses``; returns (spec, planned feature names)."""
    planned = _planned_features(diagnoses, rng)
    dx = set(diagnoses)
    u = rng.uniform
    rr_q = u(0.8, 1.0)
    hr = float(np.clip(rng.normal(72.0, 9.0), 62.0, 97.0))
    s = EcgSpec(
        hr_bpm=hr,
        rr_sd=u(0.004, 0.025),
        rsa=u(0.0, 0.05) * rr_q,
        resp_hz=u(0.15, 0.35),
        pr_ms=float(np.clip(rng.normal(150.0, 15.0), 118.0, 195.0)),
        p_dur_ms=u(85.0, 110.0),
        p_amp=u(0.08, 0.15),
        qrs_ms=float(np.clip(rng.normal(107.0, 6.0), 92.0, 118.0)),
        qrs_amp=u(1.0, 1.7),
        axis_deg=float(np.clip(rng.normal(45.0, 22.0), -25.0, 85.0)),
        t_amp=u(0.28, 0.5),
        t_z=u(0.25, 0.55),
    )
    s.t_axis_deg = float(np.clip(s.axis_deg + rng.normal(0.0, 8.0), 35.0, 70.0))
    qtc = float(np.clip(rng.normal(405.0, 15.0), 370.0, 440.0))  # Fridericia-corrected QT of a normal heart
    s.noise = NoiseSpec(
        baseline_mv=u(0.0, 0.15),
        muscle_mv=0.0 if rng.random() < 0.4 else u(0.003, 0.025),
        powerline_mv=0.0 if rng.random() < 0.5 else u(0.002, 0.02),
        powerline_hz=float(rng.choice([50.0, 60.0])),
        white_mv=u(0.001, 0.005),
    )
    # Rhythm
    if "sinus_bradycardia" in dx:
        s.hr_bpm = u(42.0, 57.0)
    elif "sinus_tachycardia" in dx:
        s.hr_bpm = u(104.0, 140.0)
    elif "atrial_fibrillation" in dx:
        s.rhythm = "af"
        s.hr_bpm = u(105.0, 140.0) if "fast_rate" in planned else u(60.0, 95.0)
        s.af_amp_mv = u(0.04, 0.1) if "fibrillatory_waves" in planned else u(0.005, 0.015)
    elif "atrial_flutter" in dx:
        s.rhythm = "flutter"
        s.flutter_rate = u(260.0, 330.0)
        options = [(4,), (2, 4), (3, 4)]
        s.flutter_conduction = (2,) if "fast_rate" in planned else options[int(rng.integers(len(options)))]
        s.flutter_amp_mv = u(0.15, 0.3)
        s.hr_bpm = s.flutter_rate / float(np.mean(s.flutter_conduction))
    elif "paced_rhythm" in dx:
        s.rhythm, s.qrs_type, s.hr_bpm = "paced", "paced", u(60.0, 80.0)
        s.rr_sd, s.rsa, s.qrs_ms, s.axis_deg = 0.002, 0.0, u(140.0, 170.0), u(-80.0, -40.0)
        s.pr_ms = u(140.0, 180.0)
    # Conduction
    if "first_degree_av_block" in dx:
        s.pr_ms = u(212.0, 320.0)
    if "rbbb" in dx:
        s.qrs_type, s.qrs_ms = "rbbb", u(124.0, 155.0)
    elif "lbbb" in dx:
        s.qrs_type, s.qrs_ms = "lbbb", u(130.0, 170.0)
        s.axis_deg = float(np.clip(s.axis_deg, -30.0, 60.0))
    elif "ivcd" in dx:
        s.qrs_type, s.qrs_ms = "ivcd", u(122.0, 140.0)
    # Voltage and axis
    if "lvh" in dx:
        s.sokolow_target_mv = u(3.7, 4.6) if "high_voltage" in planned else u(2.8, 3.3)
        if "tall_r_lateral" in planned or "deep_s_v1v2" in planned:
            s.sokolow_target_mv = max(s.sokolow_target_mv, u(5.0, 6.0))
    if "low_voltage" in dx:
        s.limb_ptp_target_mv = u(0.3, 0.45)
        s.sokolow_target_mv = None
    if "left_axis_deviation" in dx:
        s.axis_deg = u(-80.0, -45.0)
        s.t_axis_deg = u(0.0, 40.0)
    elif "right_axis_deviation" in dx:
        s.axis_deg = u(110.0, 150.0)
        s.t_axis_deg = u(60.0, 90.0)
    # QT
    if "long_qt" in dx:
        qtc = u(485.0, 560.0)
        s.u_amp = u(0.1, 0.18) if "u_waves" in planned else 0.0
    rr_s = 60.0 / s.hr_bpm
    s.qt_ms = float(qtc * np.cbrt(rr_s))
    s.qt_ms = max(s.qt_ms, s.qrs_ms + 180.0)
    # Territories: Q waves, ST shift, T changes
    q = [t for t in TERRITORIES if f"q_{t}" in planned]
    if "poor_r_progression" in planned and "anterior" not in q:
        q.append("anterior")
    s.q_territories = tuple(q)
    for t in TERRITORIES:
        if f"ste_{t}" in planned:
            s.st_shift_mv[t] = u(0.2, 0.45)
            s.t_amp *= 1.3
        elif f"std_{t}" in planned:
            s.st_shift_mv[t] = -u(0.08, 0.2)
        if f"twi_{t}" in planned:
            s.t_change[t] = "inverted"
        elif f"flat_t_{t}" in planned:
            s.t_change[t] = "flat"
    return s, planned


def _count(per_lead: dict, leads: tuple[str, ...], test) -> int:
    return sum(bool(test(per_lead[name])) for name in leads)


def label_features(truth: dict, spec: EcgSpec, planned: set[str]) -> list[str]:
    """Feature names present in the record: measured criteria on the ground truth + realised planned ones."""
    pl = truth["per_lead"]
    f: set[str] = set()
    hr, qrs = truth["hr_bpm"], truth["qrs_ms"]
    if hr < 60:
        f.add("slow_rate")
    if hr > 100:
        f.add("fast_rate")
    if truth["pr_ms"] is not None and truth["pr_ms"] > 200 and spec.rhythm == "sinus":
        f.add("long_pr")
    if qrs >= 120:
        f.add("wide_qrs")
    if truth["qtc_fridericia_ms"] > 460 and qrs < 120:
        f.add("long_qt")
    if spec.qrs_type not in ("paced",):
        r, sv = pl["r_mv"], pl["s_mv"]
        if truth["sokolow_lyon_mv"] >= 3.5:
            f.add("high_voltage")
        if max(r["V5"], r["V6"]) > 2.6:
            f.add("tall_r_lateral")
        if min(sv["V1"], sv["V2"]) <= -2.5:
            f.add("deep_s_v1v2")
        if all(pl["qrs_ptp_mv"][n] < 0.5 for n in ("I", "II", "III", "aVR", "aVL", "aVF")):
            f.add("low_voltage_limb")
        net = pl["qrs_net_mv"]
        if net["II"] < 0 and net["aVF"] < 0:
            f.add("negative_qrs_inferior")
        if net["I"] < 0:
            f.add("negative_qrs_lead_i")
        if r["V3"] < 0.3:
            f.add("poor_r_progression")
        for t, leads in TERRITORY_LEADS.items():
            q_min_ms = 20.0 if t == "anterior" else 30.0  # Q criteria of the universal MI definition
            if sum(pl["q_ms"][n] >= q_min_ms and pl["q_mv"][n] <= -0.1 for n in leads) >= 2:
                f.add(f"q_{t}")
            if _count(pl["st_j_mv"], leads, lambda v: v >= 0.1) >= 2:
                f.add(f"ste_{t}")
            if _count(pl["st_j_mv"], leads, lambda v: v <= -0.05) >= 2:
                f.add(f"std_{t}")
            if _count(pl["t_mv"], leads, lambda v: v <= -0.1) >= 2:
                f.add(f"twi_{t}")
            elif _count(pl["t_mv"], leads, lambda v: abs(v) < 0.1) >= 2 and t != "anterior":
                f.add(f"flat_t_{t}")
    by_plan = {n for n in planned if FEATURES[n]["kind"] == "planned"}
    if truth["n_pvc"] == 0:
        by_plan.discard("premature_wide_beats")
    else:
        by_plan.discard("sinus_p")  # an ectopic ventricular beat has no P wave before it
    if truth["n_pac"] == 0:
        by_plan.discard("premature_p")
    if spec.rhythm == "af" and spec.af_amp_mv < 0.03:
        by_plan.discard("fibrillatory_waves")
    return sorted(f | by_plan)


def ecg_class(diagnoses: list[str]) -> str:
    """Summary statement class: normal / borderline / abnormal."""
    rest = [d for d in diagnoses if d not in ("sinus_rhythm", "normal_ecg")]
    if not rest:
        return "normal"
    return "borderline" if all(d in BORDERLINE for d in rest) else "abnormal"


def simulate_case(seed, fs: float = 500.0, seconds: float = 10.0, with_clean: bool = False) -> dict:
    """One complete case: diagnoses, spec, signal, ground truth and features; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    diagnoses = sample_diagnoses(rng)
    spec, planned = plan_spec(diagnoses, rng)
    if "pvcs" in diagnoses:
        spec.n_pvc = int(rng.integers(1, 4))
    if "pacs" in diagnoses:
        spec.n_pac = int(rng.integers(1, 3))
    signal, truth = render(spec, rng, fs=fs, seconds=seconds, with_clean=with_clean)
    features = label_features(truth, spec, planned)
    # an ectopy diagnosis stands only if an ectopic beat fell inside the 10 s
    diagnoses = [
        d
        for d in diagnoses
        if not ((d == "pvcs" and truth["n_pvc"] == 0) or (d == "pacs" and truth["n_pac"] == 0))
    ]
    if diagnoses == ["sinus_rhythm"]:
        diagnoses.append("normal_ecg")
    return {
        "diagnoses": diagnoses,
        "spec": spec,
        "planned": sorted(planned),
        "features": features,
        "signal": signal,
        "truth": truth,
    }
