"""The offline knowledge base: report statements -> candidate waveform features, and feature phrases in reports.

Two documented tables, both matched on the lower-cased report (English, German and a few Swedish cart
statements, as PTB-XL and MIMIC-IV-ECG write them):

* ``FEATURE_PATTERNS``: how a report *states* a waveform feature (an observation on the tracing: a wave, an
  interval, a voltage, a segment, located in leads), e.g. "st segments are depressed in i, avl, v5,6" or
  "qt-verlängerung". Used to measure how often reports state features (:func:`stated_features`,
  :func:`states_feature`) and, on the synthetic corpus, which features a report already stated. Diagnoses
  ("left bundle branch block"), axis statements ("left axis deviation", "linkstyp") and summaries ("qrs(t)
  abnorm", "nonspecific st-t abnormality") are statements, not features.
* ``STATEMENTS``: each diagnostic statement with the features an expert (or an LLM asked the paper's question)
  would list as likely present, **including features of related diagnoses that are often absent** (LBBB also
  proposes the deep S waves and poor R progression of LVH; an old inferior infarct also proposes ST elevation
  and a left axis; atrial fibrillation also proposes the ST depression of digitalis), so that validation has
  something to reject. It is written from ECG textbook criteria, not from the synthetic generator's link
  table.

Candidate strings are normalised feature phrases: the synthetic vocabulary's canonical phrase where one exists
(so kept features can be scored against ground truth, :data:`PHRASE_TO_FEATURE`) and plain clinical phrasing
for features outside it (``EXTRA_PHRASES``, e.g. "delta wave"). :func:`propose` is the ``kb`` backend.
"""

from __future__ import annotations

import re
from functools import cache

from ..synth.vocabulary import FEATURES
from .text import normalise_feature

VERSION = "kb-v1"  # the kb backend's model identity in the candidate cache: bump when the tables change
MAX_CANDIDATES = 10

# Features seen in real reports that the synthetic vocabulary does not model (name -> phrase).
EXTRA_PHRASES: dict[str, str] = {
    "x_p_mitrale": "broad notched P wave in II",
    "x_p_pulmonale": "tall peaked P wave in II",
    "x_delta_wave": "delta wave",
    "x_short_pr": "short PR interval",
    "x_high_voltage_limb": "increased QRS voltage in limb leads",
    "x_t_abnormal": "abnormal T waves",
    "x_st_abnormal": "ST segment changes",
    "x_late_transition": "late R wave transition in precordial leads",
    "x_early_transition": "early R wave transition in precordial leads",
    "x_qrs_notching": "slurred or notched QRS complex",
    "x_scooped_st": "scooped ST depression",
    "x_short_qt": "short QT interval",
    "x_s1q3t3": "S wave in I, Q wave and inverted T wave in III",
    "x_dominant_r_v1": "dominant R wave in V1",
    "x_q_lateral_avl": "Q wave in I and aVL",
    "x_incomplete_rbbb": "rSr' pattern in V1 with QRS below 120 ms",
    "x_ventricular_bigeminy": "every other beat a premature wide QRS complex",
    "x_normal_qrs": "normal QRS duration",
}


def phrase(name: str) -> str:
    """Normalised candidate string of a feature name (synthetic or ``x_`` extra)."""
    raw = FEATURES[name]["phrase"] if name in FEATURES else EXTRA_PHRASES[name]
    return normalise_feature(raw) or raw.lower()


# normalised phrase -> synthetic feature name (the scoring map; extra phrases map to None)
PHRASE_TO_FEATURE: dict[str, str | None] = {phrase(n): n for n in FEATURES} | {
    phrase(n): None for n in EXTRA_PHRASES
}

# ---------------------------------------------------------------------------------------------------------
# Feature statements in report text
# ---------------------------------------------------------------------------------------------------------
_TERRITORY_WORDS = {
    "inferior": r"inferi|inferolat",
    "anterior": r"anter|septal|v1|v2|v3|v4|vorderwand",
    "lateral": r"later|hochlat|v5|v6|\bavl\b|\bi\b",
}
_LEADS = {
    "inferior": ("ii", "iii", "avf"),
    "anterior": ("v1", "v2", "v3", "v4"),
    "lateral": ("i", "avl", "v5", "v6"),
}
_LEAD_TOKEN = re.compile(r"\b(avr|avl|avf|iii|ii|i|v[1-6](?:\s*-\s*v?[1-6]|(?:\s*,\s*[1-6]\b)+)?)\b")


def leads_in(text: str) -> set[str]:
    """Lead names listed in ``text`` ("i, avl, v4,5,6", "v1-v3", "v2,3", "ii, iii, avf"), lower-case."""
    out: set[str] = set()
    for tok in _LEAD_TOKEN.findall(text):
        tok = tok.replace(" ", "")
        if tok.startswith("v"):
            nums = [int(x) for x in re.findall(r"[1-6]", tok)]
            if "-" in tok and len(nums) == 2:
                nums = list(range(nums[0], nums[1] + 1))
            out |= {f"v{n}" for n in nums}
        else:
            out.add(tok)
    return out


def territories_in(text: str) -> set[str]:
    """Territories (inferior / anterior / lateral) a clause locates a finding in, by lead list or word."""
    leads = leads_in(text)
    found = {t for t, names in _LEADS.items() if leads & set(names)}
    if not leads:
        found |= {t for t, w in _TERRITORY_WORDS.items() if t != "lateral" and re.search(w, text)}
        if re.search(r"later|hochlat", text):
            found.add("lateral")
    if re.search(r"throughout|alle[nm]? ableitungen|all leads", text):
        found |= set(_LEADS)
    return found


# (feature name or None for territory-dependent, regex): the regexes are applied to one clause.
_PLAIN: dict[str, list[str]] = {
    "slow_rate": [r"(heart )?rate (below|under|less than|<) ?60", r"frequenz unter 60"],
    "fast_rate": [r"(heart )?rate (above|over|more than|>) ?100", r"frequenz über 100"],
    "sinus_p": [r"upright p[- ]waves?", r"p[- ]waves? before every qrs"],
    "absent_p": [
        r"(absent|no|without) p[- ]?waves?",
        r"p[- ]?waves? (are )?(absent|not (seen|identified|visible)|inconspicuous)",
        r"keine p[- ]?wellen",
    ],
    "irregular_rr": [r"irregular(ly irregular)? (rr|r-r)", r"irregular ventricular rhythm"],
    "fibrillatory_waves": [r"fibrillatory (baseline )?waves", r"\bf[- ]waves\b", r"flimmerwellen"],
    "flutter_waves": [r"(sawtooth|flutter) waves", r"flatterwellen"],
    "pacing_spikes": [r"(pacemaker|pacing|stimulation) spikes?", r"schrittmacher-?(spikes?|impulse)"],
    "premature_wide_beats": [r"premature wide qrs"],
    "premature_p": [r"premature beats with abnormal p"],
    "long_pr": [
        r"(prolonged|long|lengthened) pr( interval)?\b",
        r"pr (interval )?(is )?prolonged",
        r"p[qr][- ]?(zeit)?[- ]?verl[äa]ngerung",
        r"förlängd pq",
    ],
    "wide_qrs": [
        r"(wide|broad|widened) qrs",
        r"qrs( complexes?)? (is |are )?(widened|broad|wide)",
        r"qrs-?verbreiterung",
        r"verbreiterte[rsn]? qrs",
    ],
    "long_qt": [
        r"(prolonged|long) qtc?\b",
        r"qtc?( interval)? (is )?prolonged",
        r"qtc?-?verl[äa]ngerung",
        r"förlängd qt",
    ],
    "rsr_v1": [r"\brsr['’]"],
    "wide_s_lateral": [r"(wide|broad|slurred) s[- ]waves?"],
    "notched_r_lateral": [r"notched r[- ]waves?", r"m-shaped"],
    "absent_septal_q": [r"(absent|no) septal q"],
    "high_voltage": [
        r"(increased|high) (qrs )?voltages? in (chest|precordial)",
        r"voltages are high in chest",
        r"increased qrs voltage\b(?! in limb)",
        r"amplitudenkriterien f.r linkshypertrophie",
    ],
    "tall_r_lateral": [r"tall r[- ]waves?"],
    "deep_s_v1v2": [r"deep s[- ]waves?"],
    "low_voltage_limb": [
        r"low (qrs )?voltages?",
        r"low limb lead voltage",
        r"low (qrs )?amplitudes?",
        r"small qrs amplitudes",
        r"niederspannung",
        r"niedervoltage",
        r"låg spänning",
    ],
    "negative_qrs_inferior": [r"negative qrs in (ii|inferior)"],
    "negative_qrs_lead_i": [r"negative qrs in (lead )?i\b"],
    "poor_r_progression": [
        r"poor (r[- ]wave )?progression",
        r"poor progression of r",
        r"(verz[öo]gerte|schlechte|fehlende) r-?progression",
        r"r-?progression.{0,20}verz[öo]gert",
    ],
    "u_waves": [r"\bu[- ]waves?", r"u-wellen?"],
    "x_p_mitrale": [r"p[- ]sinistrocardiale", r"p[- ]mitrale", r"p[- ]verbreiterung", r"broad notched p"],
    "x_p_pulmonale": [r"p[- ]dextrocardiale", r"p[- ]pulmonale", r"peaked p"],
    "x_delta_wave": [r"delta[- ]?welle", r"delta wave"],
    "x_short_pr": [r"short pr", r"pr.{0,10}short", r"pq-?verk[üu]rzung"],
    "x_high_voltage_limb": [r"voltages are high in limb", r"high voltage in limb"],
    "x_late_transition": [r"transition zone.{0,30}(displaced|shifted) to the left"],
    "x_early_transition": [r"transition zone.{0,30}(displaced|shifted) to the right"],
    "x_short_qt": [r"short qt", r"qt-?verk[üu]rzung"],
    "x_s1q3t3": [r"s1q3|siqiii|s i q iii"],
    "x_dominant_r_v1": [r"dominant r[- ]waves? in v1", r"tall r[- ]waves? in v1"],
}
# Territory-located wave findings: kind -> regexes; the clause's leads / words decide the territory.
_LOCATED: dict[str, list[str]] = {
    "q": [
        r"\bq[- ]?(waves?|zacke[n]?|våg)\b",
        r"\bqs[- ]?(complex(es)?|komplexe?)\b",
        r"pathological q",
        r"patologisk q",
    ],
    "ste": [
        r"\bst[- ]?(segments? )?(are |is )?(elevat\w*|hebung\w*|höjning)",
        r"st elevation",
        r"st-t \(hebung\)",
    ],
    "std": [
        r"\bst[- ]?(segments? )?(are |is )?(depress\w*|senkung\w*|sänkning)",
        r"st[- ]?(segment )?depression",
    ],
    "twi": [
        r"\bt[- ]?waves? (are )?(\w+ )?(inverted|inversion|negative)",
        r"t[- ]wave inversion",
        r"\binversion in\b",
        r"negative t",
        r"t[- ](negativierung|inversion)",
        r"\bneg\. in",
    ],
    "flat_t": [
        r"\bt[- ]?waves? (are )?(low or flat|flat|low|flattened)",
        r"t[- ]wave flattening",
        r"abgeflacht",
        r"flat t",
    ],
    "t_abnormal": [r"\bt abnorm\w* in", r"t-?ver[äa]nderung\w*", r"st-t (wave )?changes in"],
}
_TERRITORY_FEATURE = {
    "q": "q_{}",
    "ste": "ste_{}",
    "std": "std_{}",
    "twi": "twi_{}",
    "flat_t": "flat_t_{}",
}
_GENERIC = {
    "q": "x_q_lateral_avl",
    "ste": "x_st_abnormal",
    "std": "x_st_abnormal",
    "twi": "x_t_abnormal",
    "flat_t": "x_t_abnormal",
    "t_abnormal": "x_t_abnormal",
}
# Statements about a wave that name a diagnosis or "normal" finding, not a feature that is present.
_NOT_A_FINDING = re.compile(
    r"\b(normal|are probably normal|within normal|is normal|not significant|no significant|no definite)\b"
)

FEATURE_PATTERNS: dict[str, list[str]] = dict(_PLAIN) | {f"{k} in territory": v for k, v in _LOCATED.items()}

_CLAUSE = re.compile(r"\.\s+|\.$|;|\s{2,}|\n")


@cache
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def clauses(report: str) -> list[str]:
    """The report's statements: split at full stops, semicolons and the column gaps of cart printouts."""
    text = str(report).lower()
    return [c.strip() for c in _CLAUSE.split(text) if c and c.strip()]


def stated_features(report: str) -> set[str]:
    """Waveform features the report states (synthetic names where the finding maps to one, else ``x_``)."""
    out: set[str] = set()
    for clause in clauses(report):
        for name, pats in _PLAIN.items():
            if any(_compiled(p).search(clause) for p in pats):
                out.add(name)
        for kind, pats in _LOCATED.items():
            m = next((mm for p in pats if (mm := _compiled(p).search(clause))), None)
            if m is None:
                continue
            rest = clause[m.end() :]
            if kind == "q" and _NOT_A_FINDING.search(rest[:40]):
                continue
            where = territories_in(rest) or territories_in(clause)
            fmt = _TERRITORY_FEATURE.get(kind)
            named = {fmt.format(t) for t in where if fmt and fmt.format(t) in FEATURES} if fmt else set()
            out |= named or {_GENERIC[kind]}
    return out


def states_feature(report: str) -> bool:
    """True if the report states at least one waveform feature."""
    return bool(stated_features(report))


# ---------------------------------------------------------------------------------------------------------
# Statements -> candidate features
# ---------------------------------------------------------------------------------------------------------
# name: (regexes on a clause, features proposed (most likely first), related statements)
STATEMENTS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "sinus_rhythm": (
        [r"\bsinus rhythm", r"sinusrhythmus", r"sinusrytm", r"normal sinus"],
        ["sinus_p", "x_normal_qrs"],
        [],
    ),
    "sinus_arrhythmia": ([r"sinus arrhythmi"], ["sinus_p", "irregular_rr"], []),
    "sinus_bradycardia": (
        [r"sinus ?bradycardi", r"sinusbradykardi", r"bradycardia"],
        ["slow_rate", "sinus_p", "long_pr", "u_waves"],
        ["first_degree_av_block"],
    ),
    "sinus_tachycardia": (
        [r"sinus ?tachycardi", r"sinustachykardi", r"tachykard"],
        ["fast_rate", "sinus_p", "std_inferior", "x_p_pulmonale"],
        [],
    ),
    "atrial_fibrillation": (
        [r"atrial fibrillation", r"\bafib\b", r"vorhofflimmern", r"förmaksflimmer"],
        ["absent_p", "irregular_rr", "fibrillatory_waves", "fast_rate", "std_lateral", "x_scooped_st"],
        ["atrial_flutter"],
    ),
    "atrial_flutter": (
        [r"atrial flutter", r"vorhofflattern", r"-flattern", r"förmaksfladder"],
        ["flutter_waves", "absent_p", "fast_rate", "irregular_rr"],
        ["atrial_fibrillation"],
    ),
    "paced": (
        [r"pace[dm]", r"pacemaker", r"schrittmacher", r"pacing"],
        ["pacing_spikes", "wide_qrs", "notched_r_lateral", "negative_qrs_inferior", "absent_p"],
        ["lbbb"],
    ),
    "first_degree_av_block": (
        [
            r"1st degree a-?v block",
            r"first degree a-?v block",
            r"a-?v block i\b",
            r"prolonged pr",
            r"av-block i",
        ],
        ["long_pr", "slow_rate"],
        [],
    ),
    "wpw": ([r"wpw", r"pre-?excitation", r"wolff"], ["x_delta_wave", "x_short_pr", "wide_qrs"], []),
    "rbbb": (
        [r"right bundle branch block", r"\brbbb\b", r"rechtsschenkelblock", r"högersidigt skänkelblock"],
        ["wide_qrs", "rsr_v1", "wide_s_lateral", "twi_anterior", "std_anterior", "x_dominant_r_v1"],
        ["ivcd"],
    ),
    "incomplete_rbbb": (
        [r"incomplete right bundle", r"unvollst.ndiger rechtsschenkelblock", r"inkomplett h.gersidigt"],
        ["rsr_v1", "x_incomplete_rbbb", "wide_s_lateral", "x_normal_qrs"],
        ["rbbb"],
    ),
    "lbbb": (
        [r"left bundle branch block", r"\blbbb\b", r"linksschenkelblock", r"vänstersidigt skänkelblock"],
        [
            "wide_qrs",
            "notched_r_lateral",
            "absent_septal_q",
            "std_lateral",
            "twi_lateral",
            "deep_s_v1v2",
            "poor_r_progression",
            "ste_anterior",
        ],
        ["lvh"],
    ),
    "ivcd": (
        [r"intraventricular (conduction )?(delay|block)", r"\bivcd\b", r"intraventr", r"leitungsst.rung"],
        ["wide_qrs", "notched_r_lateral", "x_qrs_notching"],
        ["lbbb"],
    ),
    "lafb": (
        [r"left anterior fascicular", r"linksanteriorer hemiblock", r"\blah\b", r"\blafb\b"],
        ["negative_qrs_inferior", "x_q_lateral_avl", "x_normal_qrs"],
        ["left_axis_deviation"],
    ),
    "lpfb": (
        [r"left posterior fascicular", r"linksposteriorer hemiblock", r"\blpfb\b"],
        ["negative_qrs_lead_i", "q_inferior"],
        ["right_axis_deviation"],
    ),
    "bifascicular": ([r"bifascicular"], ["wide_qrs", "rsr_v1", "negative_qrs_inferior"], []),
    "lvh": (
        [
            r"left ventricular hypertrophy",
            r"\blvh\b",
            r"linkshypertrophie",
            r"vänsterkammarhypertrofi",
            r"lv strain",
            r"linksbelastung",
        ],
        [
            "high_voltage",
            "tall_r_lateral",
            "deep_s_v1v2",
            "std_lateral",
            "twi_lateral",
            "negative_qrs_inferior",
            "x_p_mitrale",
            "wide_qrs",
        ],
        ["left_axis_deviation"],
    ),
    "rvh": (
        [r"right ventricular hypertrophy", r"rechtshypertrophie", r"\brvh\b"],
        ["x_dominant_r_v1", "negative_qrs_lead_i", "twi_anterior", "x_p_pulmonale"],
        ["right_axis_deviation"],
    ),
    "left_atrial": (
        [r"left atrial (enlargement|abnormality|overload)", r"p[- ]sinistrocardiale", r"p[- ]mitrale"],
        ["x_p_mitrale"],
        [],
    ),
    "right_atrial": (
        [r"right atrial (enlargement|abnormality|overload)", r"p[- ]dextrocardiale", r"p[- ]pulmonale"],
        ["x_p_pulmonale"],
        [],
    ),
    "low_voltage": (
        [r"low (qrs )?volt", r"low limb lead voltage", r"niederspannung", r"låg spänning"],
        ["low_voltage_limb", "poor_r_progression", "fast_rate", "flat_t_lateral"],
        [],
    ),
    "left_axis_deviation": (
        [r"left(ward)? axis", r"linkstyp", r"\bllt\b", r"vänster el-axel"],
        ["negative_qrs_inferior", "x_q_lateral_avl"],
        [],
    ),
    "right_axis_deviation": (
        [r"right(ward)? axis", r"rechtstyp", r"höger el-axel"],
        ["negative_qrs_lead_i", "x_s1q3t3"],
        [],
    ),
    "inferior_mi_old": (
        [
            r"inferior (myocardial )?infarct",
            r"inferiorer infarkt",
            r"inferior infarkt",
            r"old inferior",
            r"inferior myocardial infarction",
        ],
        ["q_inferior", "twi_inferior", "flat_t_inferior", "negative_qrs_inferior", "ste_inferior"],
        [],
    ),
    "anterior_mi_old": (
        [r"anter\w* (myocardial )?infarct", r"anter\w*er infarkt", r"anter\w* infarkt", r"septal\w* infar"],
        ["q_anterior", "poor_r_progression", "twi_anterior", "ste_anterior"],
        [],
    ),
    "lateral_mi_old": (
        [r"lateral (myocardial )?infarct", r"lateraler infarkt", r"lateral infarkt", r"lateral myokard"],
        ["q_lateral", "twi_lateral", "flat_t_lateral", "x_q_lateral_avl"],
        [],
    ),
    "infarct_unspecified": (
        [r"^myocardial infarction$", r"^infarct$", r"myokardinfarkt", r"\binfarkt\b"],
        ["q_inferior", "q_anterior", "twi_inferior", "twi_anterior"],
        [],
    ),
    "acute_mi": (
        [r"acute", r"\bakut", r"stemi", r"injury", r"färsk", r"myokardschaden", r"innenschicht"],
        ["ste_inferior", "ste_anterior", "std_lateral", "std_inferior", "twi_anterior"],
        [],
    ),
    "ischaemia": (
        [r"isch(a)?emi", r"isch.mie", r"ischemi", r"myokardaffektion"],
        ["std_lateral", "std_inferior", "twi_lateral", "twi_anterior", "flat_t_lateral"],
        [],
    ),
    "nonspecific_st_t": (
        [
            r"non-?specific (st|t)",
            r"unspezifisch\w* (abnorm\w* )?(st|t)\b",
            r"st & t abnorm",
            r"st-t",
            r"t abnorm",
            r"ospecifik",
        ],
        ["flat_t_lateral", "flat_t_inferior", "std_lateral", "twi_inferior", "twi_lateral", "std_inferior"],
        [],
    ),
    "digitalis": ([r"digitalis", r"digoxin"], ["x_scooped_st", "std_lateral", "x_short_qt", "long_pr"], []),
    "long_qt": (
        [r"(prolonged|long) qt", r"qt-?verl.ngerung", r"förlängd qt"],
        ["long_qt", "u_waves", "flat_t_lateral", "twi_lateral"],
        [],
    ),
    "hypokalaemia": ([r"hypokal"], ["u_waves", "flat_t_lateral", "std_lateral", "long_qt"], []),
    "pvcs": (
        [
            r"ventricular (premature )?(complex|contraction|extrasystole|ectop|premature)",
            r"\bpvc",
            r"ventrikul.re extrasystole",
            r"ventrikulär extrasystoli",
            r"bigeminy",
        ],
        ["premature_wide_beats", "irregular_rr", "wide_qrs", "x_ventricular_bigeminy"],
        [],
    ),
    "pacs": (
        [
            r"atrial (premature )?(complex|contraction|extrasystole|premature)",
            r"supraventricular (premature|extrasystole)",
            r"\bpacs?\b",
            r"pac\(s\)",
            r"supraventrikul.re extrasystole",
        ],
        ["premature_p", "irregular_rr", "fast_rate"],
        [],
    ),
    "svt": (
        [r"supraventricular tachy", r"supraventrikul.re (tachy|arrhythmie)"],
        ["fast_rate", "absent_p", "irregular_rr"],
        [],
    ),
    "poor_r_progression": (
        [r"poor (r[- ]wave )?progression", r"r-?progression", r"transition zone"],
        ["poor_r_progression", "q_anterior", "x_late_transition"],
        ["anterior_mi_old"],
    ),
    "normal": (
        [
            r"^normal ecg$",
            r"otherwise normal",
            r"normales ekg",
            r"within normal limits",
            r"normalt ekg",
            r"no definite pathology",
        ],
        ["sinus_p", "x_normal_qrs"],
        [],
    ),
}
_FROM_RELATED = 2  # features taken from each related statement


def _check_tables() -> None:
    names = set(FEATURES) | set(EXTRA_PHRASES)
    for key, (_, feats, related) in STATEMENTS.items():
        bad = [f for f in feats if f not in names] + [r for r in related if r not in STATEMENTS]
        if bad:
            raise KeyError(f"knowledge base statement {key!r} names unknown features/statements {bad}")
    for name in _PLAIN:
        if name not in names:
            raise KeyError(f"knowledge base feature pattern names unknown feature {name!r}")


_check_tables()


def matched_statements(report: str) -> list[str]:
    """Statement names the report contains, in the order they first appear."""
    found: list[str] = []
    for clause in clauses(report):
        for key, (pats, _, _) in STATEMENTS.items():
            if key not in found and any(_compiled(p).search(clause) for p in pats):
                found.append(key)
    return found


def propose_names(report: str) -> list[str]:
    """Feature names proposed for a report (own features of each statement first, then related ones)."""
    keys = matched_statements(report)
    own: list[str] = []
    for k in keys:
        own += STATEMENTS[k][1]
    extra: list[str] = []
    for k in keys:
        for r in STATEMENTS[k][2]:
            extra += STATEMENTS[r][1][:_FROM_RELATED]
    # a specific statement overrides the generic "normal QRS" of sinus rhythm
    out = list(dict.fromkeys(own + extra))
    if any(f in out for f in ("wide_qrs", "x_qrs_notching")):
        out = [f for f in out if f != "x_normal_qrs"]
    return out[:MAX_CANDIDATES]


def propose(report: str) -> list[str]:
    """Candidate waveform-feature strings for one report (normalised phrases, most likely first)."""
    return [phrase(n) for n in propose_names(report)]


def feature_of(candidate: str) -> str | None:
    """Synthetic feature name of a candidate string (None: not in the synthetic vocabulary)."""
    key = normalise_feature(candidate)
    return PHRASE_TO_FEATURE.get(key) if key else None


# ---------------------------------------------------------------------------------------------------------
# Corpus statistics (the measurement behind the synthetic generator's mention rate)
# ---------------------------------------------------------------------------------------------------------
_SWEDISH = re.compile(r"sinusrytm|förlopp|el-axel|såsom|ålder|vänster|höger|skänkelblock|sannolikt|bör")
_GERMAN = re.compile(
    r"sinusrhythmus|lagetyp|linkstyp|rechtstyp|\bekg\b|ableitung|infarkt|schrittmacher|vorhof|bradykardie|"
    r"tachykardie|extrasystole|schenkelblock|hypertrophie|niederspannung|unbest|abnorm\b|ischämie|[äöüß]"
)


def language(report: str) -> str:
    """``"sv"``, ``"de"`` or ``"en"``: the statement language of a cart report (keyword heuristic)."""
    text = str(report).lower()
    if _SWEDISH.search(text):
        return "sv"
    return "de" if _GERMAN.search(text) else "en"


def report_stats(reports: list[str]) -> dict:
    """Share of reports stating a waveform feature (all / synthetic-vocabulary ones), per language, and the
    knowledge base's coverage (reports with at least one statement, with at least one candidate)."""
    from .text import normalise_report

    rows = []
    for r in reports:
        stated = stated_features(r)
        rows.append(
            {
                "lang": language(r),
                "stated": bool(stated),
                "stated_synth": any(f in FEATURES for f in stated),
                "statement": bool(matched_statements(r)),
                "candidates": len(propose_names(r)),
            }
        )

    def summary(sel: list[dict]) -> dict:
        n = len(sel) or 1
        return {
            "reports": len(sel),
            "share_stating_feature": sum(x["stated"] for x in sel) / n,
            "share_stating_synthetic_feature": sum(x["stated_synth"] for x in sel) / n,
            "kb_statement_coverage": sum(x["statement"] for x in sel) / n,
            "kb_candidate_coverage": sum(x["candidates"] > 0 for x in sel) / n,
            "candidates_per_report": sum(x["candidates"] for x in sel) / n,
        }

    out = summary(rows)
    out["unique_normalised_reports"] = len({normalise_report(r) for r in reports})
    out["by_language"] = {g: summary([x for x in rows if x["lang"] == g]) for g in ("en", "de", "sv")}
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import csv
    import json

    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.augment.knowledge",
        description="Measure on a PTB-XL database CSV (column 'report') how many reports state a waveform "
        "feature and how much of it the knowledge base covers.",
    )
    p.add_argument("csv", help="ptbxl_database*.csv")
    p.add_argument("--column", default="report")
    args = p.parse_args(argv)
    with open(args.csv, newline="", encoding="utf-8") as f:
        reports = [row.get(args.column) or "" for row in csv.DictReader(f)]
    print(json.dumps(report_stats(reports), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
