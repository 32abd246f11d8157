"""Stage 2: waveform features proposed per report, validated by the stage-1 model, written into new shards.

``text`` normalises reports and feature strings (one prompt per unique normalised report); ``generate`` asks a
backend (vLLM offline engine, an OpenAI-compatible server, transformers, or the offline knowledge base) for
candidate features of every unique report and appends them to a persistent cache (``cache``). Generation needs
only this package and the shard reader (no open_clip), so it runs in an environment of its own (vLLM's CPU build
cannot share one with open_clip). Validation reads the cache, scores each (ECG, candidate) pair with the stage-1
model and rewrites the shards with the kept features.
"""
