"""Physiological 12-lead ECG simulator: a moving cardiac dipole projected onto the standard leads.

Every wave (P, QRS deflections, ST shift, T, U, pacing spike) is a sum of smooth bumps with compact support,
each with a 3-D dipole direction. A bump rises over ``hl`` ms (half a Hann window), stays flat for ``pl`` ms
and falls over ``hr`` ms, so wave onsets and offsets are exact: PR, QRS duration and QT of the generated
beats are the generator's parameters, not estimates. Beats are stamped along an RR sequence (sinus
variability, atrial fibrillation, flutter conduction, pacing, ectopic beats) with beat-to-beat jitter;
atrial fibrillatory/flutter waves and electrode noise (baseline wander, powerline, muscle) are added at the
electrodes before the 12 leads are formed, so Einthoven's law holds exactly in every output.

``render(spec, seed)`` returns the signal ``[12, n]`` in mV and a ground-truth dict measured on the clean
dominant beat (intervals, axis, per-lead P/Q/R/S/ST/T amplitudes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .geometry import ELECTRODE_VECTORS, LEAD_INDEX, LEAD_NAMES, LEAD_VECTORS, frontal_axis_deg

# Component table columns: start (ms, relative to QRS onset), hl, pl, hr (ms), amp (mV), vx, vy, vz, group
GROUPS = {"P": 0, "QRS": 1, "ST": 2, "T": 3, "U": 4, "SPIKE": 5}
MAX_LVH_GAIN = 2.5  # largest factor an LVH voltage target may scale the QRS dipole by

TERRITORY_VECTORS: dict[str, np.ndarray] = {
    "inferior": np.array([-0.25, 1.0, 0.0]),
    "anterior": np.array([-0.25, 0.0, 0.97]),
    "lateral": np.array([1.0, -0.3, -0.5]),
}
TERRITORY_LEADS: dict[str, tuple[str, ...]] = {
    "inferior": ("II", "III", "aVF"),
    "anterior": ("V1", "V2", "V3", "V4"),
    "lateral": ("I", "aVL", "V5", "V6"),
}
FLAT_T_LEADS: dict[str, tuple[str, ...]] = {"inferior": ("III", "aVF"), "lateral": ("I", "aVL")}
for _k, _v in TERRITORY_VECTORS.items():
    TERRITORY_VECTORS[_k] = _v / np.linalg.norm(_v)


@dataclass
class NoiseSpec:
    """Electrode noise levels (mV); zero switches a source off."""

    baseline_mv: float = 0.05
    muscle_mv: float = 0.01
    powerline_mv: float = 0.005
    powerline_hz: float = 50.0
    white_mv: float = 0.003


@dataclass
class EcgSpec:
    """Everything that defines one simulated ECG (the generator's parameters, all in ms / mV / degrees)."""

    rhythm: str = "sinus"  # sinus | af | flutter | paced
    hr_bpm: float = 70.0
    rr_sd: float = 0.015  # random beat-to-beat RR variation (fraction of RR)
    rsa: float = 0.02  # respiratory sinus arrhythmia amplitude (fraction of RR)
    resp_hz: float = 0.25
    pr_ms: float = 160.0
    p_dur_ms: float = 100.0
    p_amp: float = 0.11
    qrs_ms: float = 90.0
    qrs_type: str = "normal"  # normal | rbbb | lbbb | ivcd | paced
    qrs_amp: float = 1.5  # main QRS dipole amplitude (mV)
    axis_deg: float = 50.0  # target frontal QRS axis
    t_amp: float = 0.4
    t_axis_deg: float = 45.0
    t_z: float = 0.4
    qt_ms: float = 400.0
    u_amp: float = 0.0
    q_territories: tuple[str, ...] = ()
    st_shift_mv: dict[str, float] = field(default_factory=dict)  # territory -> +elevation / -depression
    t_change: dict[str, str] = field(default_factory=dict)  # territory -> "flat" | "inverted"
    sokolow_target_mv: float | None = None  # LVH: scale QRS so that SV1 + RV5 equals this
    limb_ptp_target_mv: float | None = None  # low voltage: scale QRS so that the largest limb QRS is this
    n_pvc: int = 0
    n_pac: int = 0
    flutter_rate: float = 300.0
    flutter_conduction: tuple[int, ...] = (2,)
    af_amp_mv: float = 0.05
    flutter_amp_mv: float = 0.2
    noise: NoiseSpec = field(default_factory=NoiseSpec)

    def to_dict(self) -> dict:
        """JSON-serialisable parameters."""
        d = asdict(self)
        d["q_territories"] = list(self.q_territories)
        d["flutter_conduction"] = list(self.flutter_conduction)
        return d


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _comp(start, hl, pl, hr, amp, vec, group) -> list[float]:
    v = _unit(vec)
    return [start, hl, pl, hr, amp, v[0], v[1], v[2], GROUPS[group] if isinstance(group, str) else group]


# ----------------------------------------------------------------------------------------------------------
# Beat templates
# ----------------------------------------------------------------------------------------------------------


def _p_wave(pr: float, pd: float, amp: float, frontal_deg: float = 65.0) -> list[list[float]]:
    a = np.deg2rad(frontal_deg)
    b = np.deg2rad(frontal_deg - 25.0)
    return [
        _comp(-pr, 0.28 * pd, 0.0, 0.30 * pd, amp, [np.cos(a), np.sin(a), 0.35], "P"),
        _comp(-pr + 0.30 * pd, 0.35 * pd, 0.0, 0.35 * pd, 0.8 * amp, [np.cos(b), np.sin(b), -0.5], "P"),
    ]


def _qrs(kind: str, d: float, amp: float, axis: float) -> list[list[float]]:
    a = np.deg2rad(axis)
    main = [np.cos(a), np.sin(a), -0.45]
    early = [np.cos(a), np.sin(a), 0.1]  # the QRS loop turns from left-anterior to left-posterior
    late = [np.cos(a), np.sin(a), -1.0]
    if kind in ("normal", "ivcd"):
        w = 1.15 if kind == "ivcd" else 1.0
        return [
            _comp(0.0, 0.12 * d, 0.0, 0.12 * d, 0.14 * amp, [-0.55, 0.25, 0.8], "QRS"),
            _comp(0.10 * d, 0.18 * d, 0.0, 0.18 * d * w, 0.8 * amp, early, "QRS"),
            _comp(0.24 * d, 0.20 * d, 0.0, 0.21 * d * w, 0.75 * amp, late, "QRS"),
            _comp(0.50 * d, 0.25 * d, 0.0, 0.25 * d, 0.2 * amp, [-0.55, -0.5, -0.65], "QRS"),
        ]
    if kind == "rbbb":
        return [
            _comp(0.0, 0.10 * d, 0.0, 0.10 * d, 0.12 * amp, [-0.55, 0.25, 0.8], "QRS"),
            _comp(0.08 * d, 0.20 * d, 0.0, 0.20 * d, amp, main, "QRS"),
            _comp(0.35 * d, 0.20 * d, 0.0, 0.20 * d, 0.3 * amp, [-0.55, -0.5, -0.65], "QRS"),
            _comp(0.55 * d, 0.22 * d, 0.0, 0.23 * d, 0.5 * amp, [-0.75, 0.1, 0.65], "QRS"),
        ]
    if kind in ("lbbb", "paced"):
        lat = [np.cos(a), np.sin(a), -0.8]
        return [
            _comp(0.0, 0.10 * d, 0.0, 0.10 * d, 0.15 * amp, [0.7, 0.1, -0.6], "QRS"),
            _comp(0.05 * d, 0.22 * d, 0.0, 0.22 * d, 0.9 * amp, lat, "QRS"),
            _comp(
                0.28 * d, 0.32 * d, 0.0, 0.40 * d, 0.8 * amp, [np.cos(a) * 0.9, np.sin(a) * 0.6, -1.0], "QRS"
            ),
        ]
    raise ValueError(f"unknown QRS type {kind!r}")


def _t_wave(d: float, qt: float, amp: float, vec, group: str = "T") -> list[float]:
    rep = qt - d
    return _comp(d + 0.12 * rep, 0.56 * rep, 0.0, 0.32 * rep, amp, vec, group)


def _net_frontal(comps: np.ndarray) -> float:
    qrs = comps[comps[:, 8] == GROUPS["QRS"]]
    area = qrs[:, 4] * (0.5 * (qrs[:, 1] + qrs[:, 3]) + qrs[:, 2])
    x, y = (area[:, None] * qrs[:, 5:7]).sum(0)
    return float(np.degrees(np.arctan2(y, x)))


def _rotate_frontal(comps: np.ndarray, mask: np.ndarray, deg: float) -> None:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    x, y = comps[mask, 5].copy(), comps[mask, 6].copy()
    comps[mask, 5], comps[mask, 6] = c * x - s * y, s * x + c * y


def dominant_template(spec: EcgSpec, rng: np.random.Generator) -> np.ndarray:
    """Component table ``[K, 9]`` of the dominant beat (times relative to QRS onset)."""
    d, qt = spec.qrs_ms, spec.qt_ms
    comps: list[list[float]] = []
    if spec.rhythm in ("sinus", "paced"):
        comps += _p_wave(spec.pr_ms, spec.p_dur_ms, spec.p_amp)
    if spec.rhythm == "paced":
        comps.append(_comp(-2.0, 1.0, 0.0, 1.0, rng.uniform(1.5, 4.0), [0.3, -0.6, 0.7], "SPIKE"))
        comps.append(_comp(-spec.pr_ms - 2.0, 1.0, 0.0, 1.0, rng.uniform(1.0, 2.5), [0.5, 0.5, 0.6], "SPIKE"))
    comps += _qrs(spec.qrs_type, d, spec.qrs_amp, spec.axis_deg)
    ta = np.deg2rad(spec.t_axis_deg)
    t_vec = _unit([np.cos(ta), np.sin(ta), spec.t_z])
    if spec.qrs_type in ("lbbb", "paced"):  # secondary (discordant) repolarisation
        a = np.deg2rad(spec.axis_deg)
        t_vec = _unit([-np.cos(a), -np.sin(a) * 0.5, 0.9])
        comps.append(_comp(d - 15.0, 15.0, 0.5 * (qt - d), 0.5 * (qt - d), 0.12, t_vec, "ST"))
    elif spec.qrs_type == "rbbb":
        t_vec = _unit([np.cos(ta), np.sin(ta), -0.45])
    comps.append(_t_wave(d, qt, spec.t_amp, t_vec))
    if spec.u_amp > 0:
        comps.append(_comp(qt + 30.0, 60.0, 0.0, 70.0, spec.u_amp, t_vec, "U"))
    arr = np.array(comps, dtype=float)

    # Rotate the QRS in the frontal plane so that its net vector has the target axis (before infarct changes,
    # which then shift the axis as they do in patients; the recorded axis is measured on the final beat).
    qrs_mask = arr[:, 8] == GROUPS["QRS"]
    for _ in range(4):
        delta = (spec.axis_deg - _net_frontal(arr) + 180.0) % 360.0 - 180.0
        if abs(delta) < 0.05:
            break
        _rotate_frontal(arr, qrs_mask, delta)

    # Infarct Q waves are sized on the QRS before voltage targets: LVH voltage must not deepen them too.
    base_amp = float(arr[qrs_mask, 4].max())

    # Voltage targets (LVH, low voltage) scale the QRS dipole; measured on the rendered template. LVH adds
    # mostly posterior (precordial) voltage.
    if spec.sokolow_target_mv is not None or spec.limb_ptp_target_mv is not None:
        if spec.sokolow_target_mv is not None:
            arr[qrs_mask, 7] *= 1.6
        m = measure_template(arr)
        if spec.sokolow_target_mv is not None:
            cur = m["sokolow_lyon_mv"]
            # LVH only ever adds voltage, and at most 2.5x: a template whose SV1 + RV5 is tiny (LBBB, axis
            # deviation) must not be blown up to impossible amplitudes (> 10 mV); labels are measured anyway.
            arr[qrs_mask, 4] *= float(np.clip(spec.sokolow_target_mv / max(cur, 1e-6), 1.0, MAX_LVH_GAIN))
        else:
            cur = max(m["qrs_ptp_mv"][LEAD_INDEX[n]] for n in LEAD_NAMES[:6])
            arr[qrs_mask, 4] *= float(np.clip(spec.limb_ptp_target_mv / max(cur, 1e-6), 0.1, 1.0))

    # Territory changes: pathological Q (initial forces away from the territory, R loss), ST shift, T change.
    extra: list[list[float]] = []
    main_amp = min(float(arr[qrs_mask, 4].max()), base_amp)
    for terr in spec.q_territories:
        u = TERRITORY_VECTORS[terr]
        extra.append(_comp(0.0, 22.0, 12.0, 22.0, rng.uniform(0.5, 0.8) * max(main_amp, 0.8), -u, "QRS"))
        extra.append(_comp(0.1 * d, 0.24 * d, 0.0, 0.24 * d, rng.uniform(0.4, 0.6) * main_amp, -u, "QRS"))
    rep = qt - d
    for terr, shift in spec.st_shift_mv.items():
        u = TERRITORY_VECTORS[terr]
        extra.append(_comp(d - 15.0, 15.0, 0.56 * rep, 0.44 * rep, shift, u, "ST"))
    t_now = t_vec * spec.t_amp
    for terr, kind in spec.t_change.items():
        # Least-norm change of the T vector that puts the T wave of the territory's leads at the target
        # (inverted: -0.15..-0.45 mV; flat: within +-0.04 mV on a pair of the territory's leads).
        leads = FLAT_T_LEADS[terr] if kind == "flat" else TERRITORY_LEADS[terr]
        lv = LEAD_VECTORS[[LEAD_INDEX[n] for n in leads]]
        want = -rng.uniform(0.15, 0.45) if kind == "inverted" else rng.uniform(-0.04, 0.04, size=len(leads))
        delta = np.linalg.lstsq(lv, want - lv @ t_now, rcond=None)[0]
        t_now = t_now + delta
        if np.linalg.norm(delta) > 1e-9:
            extra.append(_t_wave(d, qt, float(np.linalg.norm(delta)), delta, "T"))
    if extra:
        arr = np.vstack([arr, np.array(extra, dtype=float)])

    return arr


def pvc_template(rng: np.random.Generator) -> np.ndarray:
    """A wide ectopic ventricular beat (no P wave, discordant T), origin drawn at random."""
    d = rng.uniform(140.0, 180.0)
    origin = rng.integers(3)
    vec = [[0.2, 0.9, -0.6], [-0.5, 0.6, 0.7], [0.6, -0.7, 0.3]][origin]
    amp = rng.uniform(1.6, 2.4)
    v2 = _unit(vec) + rng.normal(0.0, 0.3, 3)
    comps = [
        _comp(0.0, 0.30 * d, 0.0, 0.30 * d, amp, vec, "QRS"),
        _comp(0.40 * d, 0.30 * d, 0.0, 0.30 * d, 0.4 * amp, v2, "QRS"),
        _t_wave(d, d + rng.uniform(240.0, 300.0), rng.uniform(0.4, 0.7), -_unit(vec)),
    ]
    return np.array(comps, dtype=float)


def pac_p_wave(pr: float, pd: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    """An ectopic atrial P wave (different axis)."""
    return np.array(_p_wave(pr, pd * 0.9, amp, frontal_deg=rng.uniform(-60.0, 20.0)), dtype=float)


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def render_dipole(comps: np.ndarray, n: int, fs: float) -> np.ndarray:
    """Sum the bumps of ``comps`` (times in ms from sample 0) into a dipole signal ``[3, n]``."""
    out = np.zeros((3, n))
    if len(comps) == 0:
        return out
    k = fs / 1000.0
    start, hl, pl, hr = comps[:, 0] * k, comps[:, 1] * k, comps[:, 2] * k, comps[:, 3] * k
    width = int(np.ceil((hl + pl + hr).max())) + 2
    base = np.floor(start).astype(np.int64)
    idx = base[:, None] + np.arange(width)[None, :]
    tau = idx - start[:, None]
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip(tau / hl[:, None], 0.0, 1.0))
    fall = 0.5 + 0.5 * np.cos(np.pi * np.clip((tau - (hl + pl)[:, None]) / hr[:, None], 0.0, 1.0))
    val = rise * fall * comps[:, 4:5]
    ok = (idx >= 0) & (idx < n)
    ii = idx[ok]
    vv = val[ok]
    row = np.broadcast_to(np.arange(len(comps))[:, None], idx.shape)[ok]
    for c in range(3):
        out[c] = np.bincount(ii, weights=vv * comps[row, 5 + c], minlength=n)
    return out


def dipole_to_leads(dipole: np.ndarray) -> np.ndarray:
    """Project a dipole ``[3, n]`` onto the 12 leads (via the electrodes, noise-free)."""
    return np.einsum("lc,cn->ln", LEAD_VECTORS, dipole)


def measure_template(comps: np.ndarray, fs: float = 1000.0) -> dict:
    """Per-lead amplitudes of one clean beat rendered alone (times relative to QRS onset)."""
    grp = comps[:, 8]
    qrs = comps[grp == GROUPS["QRS"]]
    q_on = 0.0
    j = float((qrs[:, 0] + qrs[:, 1] + qrs[:, 2] + qrs[:, 3]).max())
    t_comps = comps[grp == GROUPS["T"]]
    t_end = (
        float((t_comps[:, 0] + t_comps[:, 1] + t_comps[:, 2] + t_comps[:, 3]).max()) if len(t_comps) else j
    )
    pre = float(max(0.0, -(comps[:, 0].min()))) + 20.0
    n = int((pre + t_end + 200.0) * fs / 1000.0)
    shifted = comps.copy()
    shifted[:, 0] += pre
    leads = dipole_to_leads(render_dipole(shifted, n, fs))
    k = fs / 1000.0

    def s(ms: float) -> int:
        return round((pre + ms) * k)

    qrs_seg = leads[:, s(q_on) : s(j) + 1]
    r_mv = np.maximum(qrs_seg.max(1), 0.0)
    q_mv = np.zeros(12)
    q_ms = np.zeros(12)
    early = leads[:, s(q_on) : s(q_on + 10.0)]
    for i in range(12):
        seg = qrs_seg[i]
        if early[i].sum() < 0 and seg.min() < -0.01:
            pos = np.nonzero(seg[1:] >= 0.0)[0]
            end = int(pos[0]) + 1 if len(pos) else len(seg)
            q_ms[i] = end / k
            q_mv[i] = seg[:end].min()
    # S: the most negative deflection after the initial Q (if any) and after the start of the first R
    q_end = np.round(q_ms * k).astype(int)
    s_mv = np.zeros(12)
    for i in range(12):
        rest = qrs_seg[i, q_end[i] :]
        if len(rest) and rest.max() > 0.01:
            first_r = int(np.argmax(rest > 0.01))
            s_mv[i] = min(0.0, rest[first_r:].min())
    t_seg = leads[:, s(j + 20.0) : s(t_end) + 1]
    t_idx = np.abs(t_seg).argmax(1)
    t_mv = t_seg[np.arange(12), t_idx]
    p_comps = comps[grp == GROUPS["P"]]
    if len(p_comps):
        p_seg = leads[:, s(p_comps[:, 0].min()) : s(q_on)]
        p_mv = p_seg[np.arange(12), np.abs(p_seg).argmax(1)]
    else:
        p_mv = np.zeros(12)
    li = LEAD_INDEX
    qrs_area = qrs_seg.sum(1)
    return {
        "p_mv": p_mv,
        "q_mv": q_mv,
        "q_ms": q_ms,
        "r_mv": r_mv,
        "s_mv": s_mv,
        "qrs_ptp_mv": qrs_seg.max(1) - qrs_seg.min(1),
        "qrs_net_mv": qrs_seg.max(1) + qrs_seg.min(1),
        "st_j_mv": leads[:, s(j)],
        "st60_mv": leads[:, s(j + 60.0)],
        "t_mv": t_mv,
        "qrs_axis_deg": frontal_axis_deg(qrs_area[li["I"]], qrs_area[li["II"]]),
        "sokolow_lyon_mv": float(-s_mv[li["V1"]] + max(r_mv[li["V5"]], r_mv[li["V6"]])),
        "qrs_ms": j - q_on,
        "qt_ms": t_end - q_on,
    }


# ----------------------------------------------------------------------------------------------------------
# Rhythm
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Beat:
    """One beat: QRS onset (ms from record start) and kind (N sinus/conducted, V PVC, A PAC)."""

    onset_ms: float
    kind: str


def beat_schedule(
    spec: EcgSpec, duration_ms: float, rng: np.random.Generator
) -> tuple[list[Beat], np.ndarray]:
    """QRS onsets of every beat touching the record; also flutter wave times (empty unless flutter)."""
    rr = 60000.0 / spec.hr_bpm
    t = -rng.uniform(0.0, rr) - 150.0
    flutter = np.zeros(0)
    beats: list[Beat] = []
    if spec.rhythm == "flutter":
        cycle = 60000.0 / spec.flutter_rate
        f0 = -rng.uniform(0.0, cycle) - 600.0
        flutter = f0 + cycle * np.arange(int((duration_ms + 1200.0) / cycle) + 2)
        av = rng.uniform(180.0, 260.0)
        k = 0
        while k < len(flutter):
            on = flutter[k] + av
            if on > duration_ms + 400.0:
                break
            if on > -700.0:
                beats.append(Beat(on, "N"))
            k += int(rng.choice(spec.flutter_conduction))
    phase = rng.uniform(0, 2 * np.pi)
    while spec.rhythm != "flutter" and t < duration_ms + 400.0:
        beats.append(Beat(t, "N"))
        if spec.rhythm == "af":
            step = rr * np.exp(rng.normal(0.0, 0.22)) / np.exp(0.22**2 / 2)
            step = max(step, 280.0)
        else:
            mod = spec.rsa * np.sin(2 * np.pi * spec.resp_hz * t / 1000.0 + phase)
            step = rr * (1.0 + mod + spec.rr_sd * rng.normal())
        t += step
    inside = [i for i, b in enumerate(beats) if 300.0 < b.onset_ms < duration_ms - 600.0 and i > 0]
    # PVCs: replace a sinus beat by an early wide beat; the next sinus beat keeps its time (compensatory).
    n_pvc = min(spec.n_pvc, len(inside) // 2)
    pvc_at = rng.choice(inside, size=n_pvc, replace=False) if n_pvc else []
    for i in pvc_at:
        prev = beats[i - 1].onset_ms
        beats[i] = Beat(prev + (beats[i].onset_ms - prev) * rng.uniform(0.55, 0.7), "V")
    # PACs: an early conducted beat that resets the sinus node (later beats shift earlier).
    free = [
        i for i in inside if i not in set(pvc_at) and i - 1 not in set(pvc_at) and i + 1 not in set(pvc_at)
    ]
    n_pac = min(spec.n_pac, len(free) // 2) if spec.rhythm == "sinus" else 0
    for i in sorted(rng.choice(free, size=n_pac, replace=False) if n_pac else []):
        prev = beats[i - 1].onset_ms
        new = prev + (beats[i].onset_ms - prev) * rng.uniform(0.65, 0.8)
        shift = new - beats[i].onset_ms
        beats[i] = Beat(new, "A")
        for b in beats[i + 1 :]:
            b.onset_ms += shift
    return beats, flutter


# ----------------------------------------------------------------------------------------------------------
# Noise and atrial activity
# ----------------------------------------------------------------------------------------------------------


def atrial_activity(
    spec: EcgSpec, flutter_times: np.ndarray, n: int, fs: float, rng: np.random.Generator
) -> np.ndarray:
    """Fibrillatory (AF) or sawtooth flutter waves as a dipole signal ``[3, n]``."""
    t = np.arange(n) / fs
    if spec.rhythm == "af":
        sig = np.zeros(n)
        for _ in range(3):
            f = rng.uniform(4.0, 9.0)
            drift = np.cumsum(rng.normal(0.0, 0.02, n))  # slow phase wander: no two cycles alike
            sig += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * f * t + drift + rng.uniform(0, 2 * np.pi))
        sig *= spec.af_amp_mv / max(np.abs(sig).max(), 1e-9)
        return _unit([-0.3, 0.5, 0.8])[:, None] * sig[None, :]
    if spec.rhythm == "flutter" and len(flutter_times):
        cycle = float(np.diff(flutter_times).mean())
        ph = ((t * 1000.0 - flutter_times[0]) / cycle) % 1.0
        saw = np.where(ph < 0.75, -ph / 0.75, -(1.0 - ph) / 0.25) + 0.5  # slow descent, fast return
        kern = np.hanning(max(3, int(0.02 * fs)))
        saw = np.convolve(saw, kern / kern.sum(), mode="same")
        return _unit([0.1, 1.0, 0.35])[:, None] * (spec.flutter_amp_mv * saw)[None, :]
    return np.zeros((3, n))


def electrode_noise(noise: NoiseSpec, n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """Baseline wander, powerline hum, muscle (EMG) and amplifier noise at the 9 electrodes ``[9, n]``.

    Wander and hum are a few shared oscillations mixed with electrode-specific weights (respiration and mains
    couple into every electrode, unequally); EMG and amplifier noise are independent per electrode.
    """
    t = np.arange(n, dtype=np.float32) / np.float32(fs)
    waves, weights = [], []
    if noise.baseline_mv > 0:
        for f in rng.uniform(0.05, 0.5, size=3):
            waves.append(np.sin(np.float32(2 * np.pi * f) * t + np.float32(rng.uniform(0, 2 * np.pi))))
            weights.append(rng.uniform(-1.0, 1.0, size=9) * noise.baseline_mv)
    if noise.powerline_mv > 0:
        arg = np.float32(2 * np.pi * noise.powerline_hz) * t
        waves += [np.sin(arg), np.cos(arg)]
        weights += [rng.uniform(-1.0, 1.0, size=9) * noise.powerline_mv * 0.7 for _ in range(2)]
    if waves:  # shared oscillations mixed per electrode (einsum: no BLAS threads)
        out = np.einsum("ke,kn->en", np.array(weights, dtype=np.float32), np.array(waves))
    else:
        out = np.zeros((9, n), dtype=np.float32)
    if noise.muscle_mv > 0 or noise.white_mv > 0:
        w = rng.standard_normal((9, n + 1), dtype=np.float32)
        env = np.float32(noise.muscle_mv / np.sqrt(2.0)) * (
            1.0
            + 0.8
            * np.sin(
                np.float32(2 * np.pi * rng.uniform(0.1, 0.5)) * t + np.float32(rng.uniform(0, 2 * np.pi))
            )
        )
        # EMG: first difference of white noise (a high-pass, EMG sits above 20 Hz) with a slow envelope
        out += (w[:, 1:] - w[:, :-1]) * env + np.float32(noise.white_mv) * w[:, 1:]
    return out


def electrodes_to_leads(e: np.ndarray) -> np.ndarray:
    """The 12 standard leads from electrode potentials ``[9, n]`` (RA, LA, LL, V1..V6), as a cart forms them."""
    ra, la, ll = e[0], e[1], e[2]
    wct = (ra + la + ll) / 3.0
    return np.stack(
        [
            la - ra,
            ll - ra,
            ll - la,
            ra - 0.5 * (la + ll),
            la - 0.5 * (ra + ll),
            ll - 0.5 * (ra + la),
            *(e[3:] - wct),
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Record
# ----------------------------------------------------------------------------------------------------------


def render(
    spec: EcgSpec, seed, fs: float = 500.0, seconds: float = 10.0, with_clean: bool = False
) -> tuple[np.ndarray, dict]:
    """Render one ECG: ``(signal [12, n] float32 mV, ground truth dict)``; deterministic in ``seed``.

    With ``with_clean`` the truth dict also holds ``"clean"``: the noise-free signal (for tests/verification).
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * fs)
    dur = seconds * 1000.0
    dom = dominant_template(spec, rng)
    beats, flutter = beat_schedule(spec, dur, rng)
    pvc = pvc_template(rng) if any(b.kind == "V" for b in beats) else None
    no_p = dom[dom[:, 8] != GROUPS["P"]]
    pac_p = pac_p_wave(spec.pr_ms * 0.9, spec.p_dur_ms, spec.p_amp, rng)
    blocks = []
    resp_phase = rng.uniform(0, 2 * np.pi)
    for b in beats:
        tmpl = {"N": dom, "V": pvc, "A": np.vstack([no_p, pac_p]) if spec.rhythm == "sinus" else dom}[b.kind]
        c = tmpl.copy()
        c[:, 0] += b.onset_ms + rng.normal(0.0, 0.8, len(c))
        resp = 1.0 + 0.04 * np.sin(2 * np.pi * spec.resp_hz * b.onset_ms / 1000.0 + resp_phase)
        gain = np.array(
            [
                1.0 + 0.04 * rng.normal(),
                resp * (1.0 + 0.025 * rng.normal()),
                1.0,
                1.0 + 0.03 * rng.normal(),
                1.0,
                1.0,
                1.0,
            ]
        )
        c[:, 4] *= gain[c[:, 8].astype(int)]
        blocks.append(c)
    comps = np.vstack(blocks)
    dipole = render_dipole(comps, n, fs) + atrial_activity(spec, flutter, n, fs, rng)
    clean_el = np.einsum("ec,cn->en", ELECTRODE_VECTORS, dipole)  # einsum: no BLAS threads for tiny products
    noise = electrode_noise(spec.noise, n, fs, rng)
    signal = electrodes_to_leads(clean_el + noise).astype(np.float32)
    truth = ground_truth(spec, dom, beats, dur)
    if with_clean:
        truth["clean"] = electrodes_to_leads(clean_el).astype(np.float32)
    return signal, truth


def ground_truth(spec: EcgSpec, dom: np.ndarray, beats: list[Beat], dur: float) -> dict:
    """Intervals, rate, axis and per-lead amplitudes of the record as generated."""
    m = measure_template(dom)
    onsets = np.array([b.onset_ms for b in beats if 0.0 <= b.onset_ms < dur])
    rr = np.diff(onsets)
    rr_mean = float(rr.mean()) if len(rr) else 60000.0 / spec.hr_bpm
    qt = m["qt_ms"]
    has_p = spec.rhythm in ("sinus", "paced")
    per_lead = {
        k: {name: round(float(v), 4) for name, v in zip(LEAD_NAMES, m[k])}
        for k in (
            "p_mv",
            "q_mv",
            "q_ms",
            "r_mv",
            "s_mv",
            "qrs_ptp_mv",
            "qrs_net_mv",
            "st_j_mv",
            "st60_mv",
            "t_mv",
        )
    }
    return {
        "hr_bpm": round(60000.0 / rr_mean, 2),
        "rr_mean_ms": round(rr_mean, 2),
        "rr_sd_ms": round(float(rr.std()) if len(rr) else 0.0, 2),
        "pr_ms": round(spec.pr_ms, 2) if has_p else None,
        "p_dur_ms": round(spec.p_dur_ms, 2) if has_p else None,
        "qrs_ms": round(m["qrs_ms"], 2),
        "qt_ms": round(qt, 2),
        "qtc_bazett_ms": round(qt / np.sqrt(rr_mean / 1000.0), 2),
        "qtc_fridericia_ms": round(qt / np.cbrt(rr_mean / 1000.0), 2),
        "qrs_axis_deg": round(m["qrs_axis_deg"], 2),
        "sokolow_lyon_mv": round(m["sokolow_lyon_mv"], 4),
        "n_beats": len(onsets),
        "n_pvc": int(sum(b.kind == "V" and 0 <= b.onset_ms < dur for b in beats)),
        "n_pac": int(sum(b.kind == "A" and 0 <= b.onset_ms < dur for b in beats)),
        "qrs_onsets_ms": [round(float(x), 2) for x in onsets],
        "beat_kinds": "".join(b.kind for b in beats if 0.0 <= b.onset_ms < dur),
        "per_lead": per_lead,
    }
