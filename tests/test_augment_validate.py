"""Stage-2 validation and rewrite (``fgclep augment``) on a small synthetic shard set with FGCLEP-Tiny."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fgclep_plugin.augment import knowledge as kb
from fgclep_plugin.augment.cache import CandidateCache
from fgclep_plugin.augment.rewrite import augmented_text, run_augment
from fgclep_plugin.augment.rules import RULES, RuleConfig, decide, interval_truth, measured_intervals
from fgclep_plugin.augment.text import PROMPT_VERSION, normalise_report, report_key
from fgclep_plugin.augment.validate import (
    VOCABULARY,
    TextTable,
    calibrate,
    ecg_embeddings,
    naive_decisions,
    score_matrix,
    score_pairs,
)
from fgclep_plugin.ecgdata.reader import iter_raw, iter_samples
from fgclep_plugin.evaluate.zeroshot import ens_prompts as evaluation_ens_prompts

MODEL = "FGCLEP-Tiny"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from fgclep_plugin.synth.corpus import generate_corpus

    root = tmp_path_factory.mktemp("aug")
    generate_corpus(root / "syn", {"test": 14}, seed=23, maxcount=5)
    return root


@pytest.fixture(scope="module")
def lm():
    from fgclep_plugin.model.scoring import load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(MODEL)


@pytest.fixture(scope="module")
def ckpt(lm, tmp_path_factory) -> str:
    """A fixed FGCLEP-Tiny state dict, so every run in a test validates with the same weights."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(lm.model.state_dict(), path)
    return str(path)


def _urls(corpus: Path) -> str:
    return str(corpus / "syn" / "test" / "synth-test-{000000..000002}.tar")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_batched_scores_equal_naive_algorithm_1(corpus, lm):
    samples = list(iter_samples(_urls(corpus)))[:8]
    cands = [kb.propose(s["text"]) for s in samples]
    assert sum(map(len, cands)) >= 12
    texts = TextTable(lm)
    emb = ecg_embeddings(lm, [lm.preprocess(s["ecg"]) for s in samples])
    sc = score_pairs(lm, emb, cands, texts)
    distinct = {c for cl in cands for c in cl}  # each distinct text encoded once, with its lead prompts
    assert set(texts.index) == {p for c in distinct for p in evaluation_ens_prompts(c)}
    thr = float(np.median(sc.prob))  # a threshold that keeps some pairs and rejects others
    naive = naive_decisions(lm, [s["ecg"] for s in samples], cands, thr)
    flat = [p for row in naive for p in row]
    np.testing.assert_allclose(sc.prob, [p for p, _ in flat], rtol=0, atol=1e-5)
    batched = decide(sc.cos, sc.prob, None, RuleConfig("paper", paper_threshold=thr))
    clear = np.abs(sc.prob - thr) > 1e-5
    assert clear.sum() >= len(flat) - 2
    assert list(batched[clear]) == [k for (_, k), c in zip(flat, clear) if c]
    assert 0 < batched.sum() < len(flat)


def test_calibrated_threshold_matches_independent_quantile(lm):
    texts = TextTable(lm)
    g = torch.Generator().manual_seed(1)
    row = texts.rows(["wide qrs complex"])[0]
    dim = texts.emb[row].shape[0]
    emb = torch.nn.functional.normalize(torch.randn(40, dim, generator=g), dim=-1)
    proposed = [["wide qrs complex"] if i % 4 == 0 else ["prolonged pr interval"] for i in range(40)]
    got = calibrate(emb, proposed, texts, ["wide qrs complex", "delta wave"], [0.9])
    t = texts.emb[texts.rows(["wide qrs complex"])[0]]
    cos = (emb @ t).numpy()
    ref = cos[[i % 4 != 0 for i in range(40)]]  # ECGs whose reports do not propose it
    assert got["wide qrs complex"]["0.9"] == pytest.approx(float(np.quantile(ref, 0.9)), abs=1e-6)
    t2 = texts.emb[texts.rows(["delta wave"])[0]]
    assert got["delta wave"]["0.9"] == pytest.approx(float(np.quantile((emb @ t2).numpy(), 0.9)), abs=1e-6)
    keep = decide(np.array([0.5, 0.1]), np.zeros(2), np.array([0.2, np.nan]), RuleConfig("quantile"))
    assert list(keep) == [True, False]  # no reference: never kept


def test_augment_rewrites_shards_and_resumes(corpus, ckpt, tmp_path):
    inputs = corpus / "syn" / "test"
    before = _digest(inputs)
    cache = tmp_path / "cands"
    first = next(iter_samples(_urls(corpus)))
    with CandidateCache(cache, "kb", kb.VERSION, PROMPT_VERSION) as c:  # an empty answer in the cache
        c.add(report_key(first["text"]), normalise_report(first["text"]), [], "empty", "[]")
    out = str(tmp_path / "aug" / "a-%06d.tar")
    with pytest.warns(UserWarning, match=rf"report {report_key(first['text'])[:12]} .*no candidates"):
        s = run_augment(_urls(corpus), out, str(cache), MODEL, ckpt, progress=False, log=None)
    assert _digest(inputs) == before  # inputs never modified
    src = list(iter_samples(_urls(corpus)))
    got = list(iter_samples(str(tmp_path / "aug" / "a-{000000..000002}.tar")))
    assert [g["__key__"] for g in got] == [x["__key__"] for x in src]  # samples in == samples out, in order
    assert s["samples"] == 14 and s["rejected"] == 0
    n_unique = len({normalise_report(x["text"]) for x in src})
    assert s["unique_reports"] == n_unique
    assert s["llm_calls_made"] == n_unique - 1 and s["reports_with_empty_candidates"] >= 1
    for x, g in zip(src, got):
        assert np.array_equal(x["ecg"], g["ecg"])
        s2 = g["meta"]["stage2"]
        assert s2["report"] == x["text"]
        cands = [c["text"] for c in s2["candidates"]]
        if normalise_report(x["text"]) == normalise_report(first["text"]):
            assert cands == []
        else:
            assert cands == kb.propose(normalise_report(x["text"]))
        kept = [c["text"] for c in s2["candidates"] if c["kept"]]
        assert kept == s2["kept"] and g["text"] == augmented_text(x["text"], kept)
        for c in s2["candidates"]:
            assert c["kept"] == (c["threshold"] is not None and c["cos"] > c["threshold"])
    rows = {r["rule"]: r for r in s["ground_truth"]}
    assert rows["all candidates"]["kept"] == rows["all candidates"]["pairs"] > 0
    assert {"within-proposer q=0.5", "lead-ensemble q=0.9", "centred q=0.9"} <= set(rows)  # the new rules
    assert rows["paper p>0.95"]["kept"] == 0  # an untrained model is never that sure
    # a re-run: nothing rewritten, zero candidate calls
    t = tmp_path / "aug" / "a-000001.tar"
    mtime = t.stat().st_mtime_ns
    again = run_augment(_urls(corpus), out, str(cache), MODEL, ckpt, progress=False, log=None)
    assert again["llm_calls_made"] == 0 and again["shards_written_now"] == 0 and t.stat().st_mtime_ns == mtime
    assert again["samples"] == 14
    # a lost output shard is rewritten byte for byte, though this run meets the texts in another order (every
    # text embedded in its own fixed batch, every candidate calibrated on its own)
    old = t.read_bytes()
    t.unlink()
    third = run_augment(_urls(corpus), out, str(cache), MODEL, ckpt, progress=False, log=None)
    assert third["shards_written_now"] == 1 and third["llm_calls_made"] == 0
    assert t.read_bytes() == old
    # other settings into the same folder are refused
    with pytest.raises(RuntimeError, match="other settings"):
        run_augment(
            _urls(corpus), out, str(cache), MODEL, ckpt, RuleConfig("paper"), progress=False, log=None
        )


def test_corrupt_sample_is_rejected_and_the_rest_kept(corpus, ckpt, tmp_path):
    src = corpus / "syn" / "test" / "synth-test-000000.tar"
    bad = tmp_path / "in" / "bad-000000.tar"
    bad.parent.mkdir()
    with tarfile.open(src) as tin, tarfile.open(bad, "w", format=tarfile.USTAR_FORMAT) as tout:
        members = tin.getmembers()
        victim = members[3].name.split(".")[0]
        for m in members:
            data = tin.extractfile(m).read()
            if m.name == f"{victim}.npy":
                data = b"not an array"
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    s = run_augment(
        str(bad),
        str(tmp_path / "out" / "b-%06d.tar"),
        str(tmp_path / "c"),
        MODEL,
        ckpt,
        progress=False,
        log=None,
    )
    assert s["samples"] == 4 and s["rejected"] == 1
    rejects = [json.loads(x) for x in Path(s["rejects_file"]).read_text().splitlines()]
    assert rejects[0]["reason"] == "corrupt-sample" and victim in rejects[0]["message"]
    keys = [r["__key__"] for r in iter_raw(str(tmp_path / "out" / "b-000000.tar"))]
    assert victim not in keys and len(keys) == 4


def test_processes_split_the_shards(corpus, ckpt, tmp_path):
    out = str(tmp_path / "p" / "p-%06d.tar")
    a = run_augment(
        _urls(corpus), out, str(tmp_path / "c"), MODEL, ckpt, index=0, n=2, progress=False, log=None
    )
    b = run_augment(
        _urls(corpus), out, str(tmp_path / "c"), MODEL, ckpt, index=1, n=2, progress=False, log=None
    )
    assert a["shards_this_process"] == 2 and b["shards_this_process"] == 1
    assert a["samples"] + b["samples"] == 14
    n_unique = len({normalise_report(x["text"]) for x in iter_samples(_urls(corpus))})
    assert a["llm_calls_made"] + b["llm_calls_made"] == n_unique  # each report proposed once, by one process
    assert (tmp_path / "c" / "part-00000-of-00002.jsonl").exists()
    sizes = json.loads((tmp_path / "p" / "sizes.json").read_text())
    assert sum(sizes.values()) == 14 and len(sizes) == 3


def test_missing_llm_answers_name_the_command(corpus, ckpt, tmp_path):
    with pytest.raises(RuntimeError, match="fgclep features generate"):
        run_augment(
            _urls(corpus),
            str(tmp_path / "o" / "o-%06d.tar"),
            str(tmp_path / "empty-cache"),
            MODEL,
            None,
            backend="vllm",
            llm_model="tiny-llama",
            progress=False,
            log=None,
        )


def test_measured_intervals_synthetic_and_mimic():
    syn = {"synth": {"measurements": {"hr_bpm": 55.0, "pr_ms": 230, "qrs_ms": 100, "qtc_fridericia_ms": 470}}}
    iv = measured_intervals(syn)
    assert interval_truth("slow_rate", iv) and interval_truth("long_pr", iv) and interval_truth("long_qt", iv)
    assert interval_truth("wide_qrs", iv) is False and interval_truth("negative_qrs_inferior", iv) is None
    mimic = {
        "machine_measurements": {
            "rr_interval": 1000,
            "p_onset": 40,
            "qrs_onset": 250,
            "qrs_end": 380,
            "t_end": 700,
            "qrs_axis": -45,
            "p_axis": 29999,
        }
    }
    iv = measured_intervals(mimic)
    assert iv["hr"] == 60 and iv["pr"] == 210 and iv["qrs"] == 130 and iv["qtc"] == pytest.approx(450)
    assert interval_truth("negative_qrs_inferior", iv) and interval_truth("wide_qrs", iv)
    assert "pr" not in measured_intervals({"machine_measurements": {"p_onset": "29999", "qrs_onset": "250"}})
    # the genuine MIMIC-IV-ECG row (strings, as the converter keeps machine_measurements)
    row = {"rr_interval": "659", "p_onset": "40", "qrs_onset": "170", "qrs_end": "258", "t_end": "518"}
    iv = measured_intervals({"machine_measurements": {**row, "qrs_axis": "77"}})
    assert iv["pr"] == 130 and iv["qrs"] == 88 and iv["hr"] == pytest.approx(91.05, abs=0.01)
    assert iv["qtc"] == pytest.approx(348 / 0.659 ** (1 / 3)) and not interval_truth("fast_rate", iv)


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_losses(corpus, ckpt, tmp_path):
    out_dir = tmp_path / "k"
    cmd = [
        sys.executable,
        "-m",
        "fgclep_plugin.cli",
        "augment",
        "--data",
        _urls(corpus),
        "--out",
        str(out_dir / "k-%06d.tar"),
        "--cache",
        str(tmp_path / "c"),
        "--model",
        MODEL,
        "--checkpoint",
        ckpt,
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out_dir / "k-000000.tar").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = out_dir / ".fgclep-state" / "k-000002.tar.json"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    keys = [x["__key__"] for x in iter_raw(str(out_dir / "k-{000000..000002}.tar"))]
    src = [x["__key__"] for x in iter_raw(_urls(corpus))]
    assert keys == src and done.exists()
    assert not list(out_dir.glob(".*.tmp-*"))


# ---------------------------------------------------------------------------------------------------------
# The calibrated rules on constructed embeddings (no model: a table of chosen text embeddings)
# ---------------------------------------------------------------------------------------------------------
class FixedTexts:
    """A ``TextTable`` stand-in: ``fixed`` texts get their vector, any other a seeded random unit vector;
    ``asked`` lists every text requested, in order."""

    def __init__(self, dim: int, fixed: dict[str, torch.Tensor], seed: int = 0):
        self.fixed, self.gen = fixed, torch.Generator().manual_seed(seed)
        self.index: dict[str, int] = {}
        self.emb = torch.zeros(0, dim)
        self.asked: list[str] = []

    def rows(self, texts):
        self.asked += list(texts)
        for t in texts:
            if t not in self.index:
                v = self.fixed.get(t, torch.randn(self.emb.shape[1], generator=self.gen))
                self.emb = torch.cat([self.emb, torch.nn.functional.normalize(v, dim=0)[None]])
                self.index[t] = len(self.index)
        return [self.index[t] for t in texts]


LM = SimpleNamespace(logit_scale=10.0, logit_bias=-5.0)  # score_pairs reads only these


def _unit(dim: int, i: int) -> torch.Tensor:
    return torch.eye(dim)[i]


def _ecgs(coords: np.ndarray, dim: int, seed: int = 0) -> torch.Tensor:
    """Unit ECG embeddings ``[N, dim]`` with the given first coordinates ``coords`` ``[N, k]``; the rest of each
    vector is a random direction in the other dimensions."""
    g = torch.Generator().manual_seed(seed)
    head = torch.as_tensor(coords, dtype=torch.float32)
    tail = torch.nn.functional.normalize(torch.randn(len(head), dim - head.shape[1], generator=g), dim=1)
    return torch.cat([head, tail * (1 - (head**2).sum(1, keepdim=True)).sqrt()], dim=1)


def test_within_proposer_keeps_the_better_half_of_each_candidates_proposers():
    dim, c = 16, "wide qrs complex"
    texts = FixedTexts(dim, {c: _unit(dim, 0)})
    a_prop = np.random.default_rng(0).permutation(np.linspace(-0.4, 0.7, 24))  # cosines of c's 24 proposers
    a_other = np.linspace(0.75, 0.95, 24)  # the ECGs not proposing c score higher still
    emb = _ecgs(np.concatenate([a_prop, a_other])[:, None], dim)
    proposed = [[c]] * 24 + [["prolonged pr interval"]] * 24
    thr = calibrate(emb, proposed, texts, [c, "delta wave"], [0.5, 0.9])
    sc = score_pairs(LM, emb[:24], [[c]] * 24, texts)
    np.testing.assert_allclose(sc.cos, a_prop, atol=1e-6)
    kept = decide(sc.cos, sc.prob, np.full(24, thr[c]["within-proposer 0.5"]), RuleConfig("within-proposer"))
    # independently: the share of c's proposers scoring below each proposer (its rank quantile) is >= 0.5
    rank_quantile = np.array([(a_prop < a).mean() for a in a_prop])
    assert (
        set(np.flatnonzero(kept)) == set(np.flatnonzero(rank_quantile >= 0.5)) == set(np.argsort(a_prop)[12:])
    )
    quantile = decide(sc.cos, sc.prob, np.full(24, thr[c]["0.9"]), RuleConfig("quantile"))
    assert not quantile.any()  # against the ECGs not proposing it, no proposer stands out
    # proposed by none (fewer than MIN_REFERENCE): ranked among every reference ECG
    t2 = texts.emb[texts.rows(["delta wave"])[0]]
    assert thr["delta wave"]["within-proposer 0.5"] == pytest.approx(
        float(np.median((emb @ t2).numpy())), abs=1e-6
    )


def test_centring_rejects_an_ecg_close_to_every_feature_phrase():
    dim, c = 64, VOCABULARY[0]
    # the candidate along axis 0; every other vocabulary phrase mostly along a shared axis 1 ("feature text")
    g = torch.Generator().manual_seed(3)
    noise = torch.nn.functional.normalize(torch.randn(len(VOCABULARY), dim, generator=g)[:, 2:], dim=1)
    fixed = {
        v: 0.9 * _unit(dim, 1) + 0.436 * torch.cat([torch.zeros(2), n]) for v, n in zip(VOCABULARY, noise)
    }
    fixed[c] = _unit(dim, 0)
    texts = FixedTexts(dim, fixed)
    rng = np.random.default_rng(1)
    ref = np.stack([rng.permutation(np.linspace(-0.3, 0.3, 40)), rng.uniform(-0.2, 0.2, 40)], 1)
    emb = _ecgs(np.concatenate([ref, [[0.5, 0.8], [0.6, 0.0]]]), dim)  # 40 reference ECGs, then A and B
    proposed = [["prolonged pr interval"]] * 40
    thr = calibrate(emb[:40], proposed, texts, [c], [0.9])[c]
    sc = score_pairs(LM, emb[40:], [[c], [c]], texts, ["centred"])
    # independently, in numpy: cosine minus the ECG's mean cosine over the vocabulary
    e = emb.numpy()
    vocab = texts.emb[[texts.index[v] for v in VOCABULARY]].numpy()
    cos = e @ texts.emb[texts.index[c]].numpy()
    centred = cos - (e @ vocab.T).mean(1)
    np.testing.assert_allclose(sc.extra["centred"], centred[40:], atol=1e-5)
    assert thr["centred 0.9"] == pytest.approx(float(np.quantile(centred[:40], 0.9)), abs=1e-5)
    assert thr["0.9"] == pytest.approx(float(np.quantile(cos[:40], 0.9)), abs=1e-5)
    raw = decide(sc.cos, sc.prob, np.full(2, thr["0.9"]), RuleConfig("quantile"))
    cen = decide(sc.of("centred"), sc.prob, np.full(2, thr["centred 0.9"]), RuleConfig("centred"))
    assert list(raw) == [True, True] and list(cen) == [False, True]  # A's high cosine is its closeness to all


def test_lead_ensemble_scores_the_evaluations_ens_prompts():
    dim, cands = 16, ["wide qrs complex", "delta wave"]
    texts = FixedTexts(dim, {})
    emb = _ecgs(np.zeros((30, 0)), dim, seed=4)
    got = score_matrix(emb, texts, cands, "ens").numpy()
    prompts = [evaluation_ens_prompts(c) for c in cands]
    assert texts.asked == prompts[0] + prompts[1]  # the evaluation's ENS prompt list, in its order
    assert prompts[0][0] == "wide qrs complex in lead I" and prompts[0][-1] == "wide qrs complex"
    ens = np.stack([(emb @ texts.emb[texts.rows(p)].T).max(1).values.numpy() for p in prompts], 1)
    np.testing.assert_allclose(got, ens, atol=1e-6)  # as ENS scores: the best prompt
    proposed = [cands[:1] if i < 10 else cands[1:] for i in range(30)]
    thr = calibrate(emb, proposed, texts, cands, [0.9])
    assert thr[cands[0]]["lead-ensemble 0.9"] == pytest.approx(float(np.quantile(ens[10:, 0], 0.9)), abs=1e-6)
    sc = score_pairs(LM, emb[:3], [cands[:1]] * 3, texts, ["ens"])
    np.testing.assert_allclose(sc.of("ens"), ens[:3, 0], atol=1e-6)


def _augment_args(*flags: str):
    from fgclep_plugin.cli import build_parser

    return build_parser().parse_args(
        ["augment", "--data", "x.tar", "--out", "o-%06d.tar", "--cache", "c", "--checkpoint", "none", *flags]
    )


def test_cli_accepts_every_rule_and_refuses_others(capsys):
    for rule in ("within-proposer", "lead-ensemble", "centred"):
        assert rule in RULES
        args = _augment_args("--rule", rule)
        cfg = RuleConfig(args.rule, args.paper_threshold, args.cosine_threshold, args.quantile)
        assert (cfg.rule, cfg.quantile) == (rule, 0.5 if rule == "within-proposer" else 0.9)
    args = _augment_args("--rule", "within-proposer", "--quantile", "0.7")
    assert RuleConfig(args.rule, quantile=args.quantile).describe() == "within-proposer q=0.7"
    with pytest.raises(SystemExit) as e:
        _augment_args("--rule", "within-proposers")
    assert e.value.code == 2 and "invalid choice: 'within-proposers'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown decision rule"):
        RuleConfig("centered")


def test_study_arms_of_the_new_rules_parse_as_augment_flags():
    from fgclep_plugin.study.arms import arm_flags, stage2_arms
    from fgclep_plugin.study.grid import _command_parser

    rules = ["quantile", "within-proposer", "lead-ensemble", "centred"]
    arms = stage2_arms(rules)
    assert arms[:4] == [f"validated-{r}" for r in rules]
    for arm, rule in zip(arms, rules):
        assert arm_flags(arm) == ["--rule", rule]
        argv = ["augment", "--data", "x", "--out", "o-%06d.tar", "--cache", "c", "--checkpoint", "none"]
        args = _command_parser().parse_args([*argv, *arm_flags(arm)])
        assert args.rule == rule
    with pytest.raises(ValueError, match="unknown rule"):
        stage2_arms(["quantile", "centered"])


def test_augment_with_a_new_rule_keeps_by_its_stored_score(corpus, ckpt, tmp_path):
    out = tmp_path / "c"
    s = run_augment(_urls(corpus), str(out / "c-%06d.tar"), str(tmp_path / "cands"), MODEL, ckpt,
                    RuleConfig("centred"), progress=False, log=None)  # fmt: skip
    assert s["rule"] == "centred q=0.9"
    stage2 = [x["meta"]["stage2"] for x in iter_samples(str(out / "c-{000000..000002}.tar"))]
    rows = [c for s2 in stage2 for c in s2["candidates"]]
    assert rows and all(set(r["scores"]) == {"ens", "centred"} for r in rows)
    for r in rows:
        assert r["threshold"] == r["thresholds"]["centred 0.9"]
        assert r["kept"] == (r["scores"]["centred"] > r["threshold"])
    # the summary's row: the kept candidates whose feature is known and not stated by the report
    stated = [kb.stated_features(s2["report"]) for s2 in stage2]
    synth = [set(x["meta"]["synth"].get("mentioned_features") or []) for x in iter_samples(_urls(corpus))]
    scored = [c["kept"] for s2, st, m in zip(stage2, stated, synth) for c in s2["candidates"]
              if c["feature"] is not None and c["feature"] not in st | m]  # fmt: skip
    truth = {r["rule"]: r for r in s["ground_truth"]}
    assert (truth["centred q=0.9"]["pairs"], truth["centred q=0.9"]["kept"]) == (len(scored), sum(scored))


def test_augment_embeds_at_its_precision(corpus, ckpt, tmp_path, monkeypatch):
    """--precision reaches every encoder call of the validation (ECGs, candidate texts): under amp_bf16 each one
    runs inside a bfloat16 autocast, as it would on the GPU (was: fp32 whatever --precision said)."""
    from fgclep_plugin.model import scoring

    real = scoring.load_model
    seen: dict[str, set] = {"image": set(), "text": set()}

    def spying_load_model(*args, **kwargs):
        lm = real(*args, **kwargs)
        for tower in seen:
            encode = getattr(lm.model, f"encode_{tower}")

            def spy(*a, _encode=encode, _tower=tower, **k):
                on = torch.is_autocast_enabled("cpu")
                seen[_tower].add(torch.get_autocast_dtype("cpu") if on else None)
                return _encode(*a, **k)

            monkeypatch.setattr(lm.model, f"encode_{tower}", spy)
        return lm

    monkeypatch.setattr(scoring, "load_model", spying_load_model)
    s = run_augment(_urls(corpus), str(tmp_path / "b" / "b-%06d.tar"), str(tmp_path / "cands"), MODEL, ckpt,
                    progress=False, log=None, device="cpu", precision="amp_bf16")  # fmt: skip
    assert s["precision"] == "amp_bf16" and s["samples"] == 14
    assert seen == {"image": {torch.bfloat16}, "text": {torch.bfloat16}}


def test_augment_workers_prepare_the_shards_and_write_the_same_bytes(corpus, ckpt, tmp_path, monkeypatch):
    """--workers 2: every input shard is decoded and transformed in a DataLoader worker (its first samples for
    the calibration reference, then all of it while the main process scores the one before), and the shards are byte for byte those of a run without workers, also a lost one
    rewritten on resuming (a shard's fresh ECGs are embedded in batches of its own samples, whichever process
    read it and whichever shards are left)."""
    from fgclep_plugin.augment import shardscore

    real, log = shardscore.prepare_shard, tmp_path / "prepared.txt"

    def spy(url, preprocess, limit=None):  # runs where the shard is read: a forked worker sees this patch
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {Path(url).name} {limit}\n")
        return real(url, preprocess, limit)

    def read_log() -> list[tuple[int, tuple[str, str]]]:
        rows = [(int(p), (name, limit)) for p, name, limit in map(str.split, log.read_text().splitlines())]
        log.unlink()
        return rows

    monkeypatch.setattr(shardscore, "prepare_shard", spy)
    cache = str(tmp_path / "cands")
    runs = {}
    for workers in (0, 2):  # calib_size 3: one reference ECG per shard, the others embedded fresh
        out = tmp_path / f"w{workers}"
        s = run_augment(_urls(corpus), str(out / "a-%06d.tar"), cache, MODEL, ckpt, calib_size=3,
                        progress=False, log=None, device="cpu", workers=workers)  # fmt: skip
        runs[workers] = (s, read_log())
        assert s["samples"] == 14
    here, names = os.getpid(), [f"synth-test-{k:06d}.tar" for k in range(3)]
    # each shard prepared twice: its first sample for the reference (calib_size 3 / 3 shards), then all of it
    prepared = sorted([(n, "1") for n in names] + [(n, "None") for n in names])
    assert sorted(what for _, what in runs[0][1]) == prepared and {pid for pid, _ in runs[0][1]} == {here}
    assert sorted(what for _, what in runs[2][1]) == prepared
    assert here not in {pid for pid, _ in runs[2][1]} and len({pid for pid, _ in runs[2][1]}) >= 2
    assert _digest(tmp_path / "w0") == _digest(tmp_path / "w2") and len(_digest(tmp_path / "w0")) == 3
    lost = tmp_path / "w2" / "a-000001.tar"
    old = lost.read_bytes()
    lost.unlink()
    again = run_augment(_urls(corpus), str(tmp_path / "w2" / "a-%06d.tar"), cache, MODEL, ckpt, calib_size=3,
                        progress=False, log=None, device="cpu", workers=2)  # fmt: skip
    assert again["shards_written_now"] == 1 and lost.read_bytes() == old
    assert [what for _, what in read_log()] == [("synth-test-000001.tar", "None")]  # the reference was saved
