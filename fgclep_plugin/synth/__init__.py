"""Synthetic 12-lead ECG-report corpus with exactly known waveform features (the embedded default data).

``ensure_synth_corpus()`` gives the shard URLs of the default corpus, generating it when missing;
``simulate_case(seed)`` simulates one ECG with diagnoses, features and ground truth.
"""

from .cases import simulate_case
from .corpus import ensure_synth_corpus, generate_corpus
from .source import SynthSource, synth_record

__all__ = ["SynthSource", "ensure_synth_corpus", "generate_corpus", "simulate_case", "synth_record"]
