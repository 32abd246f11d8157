"""Evaluation: zero-shot, linear probe, retrieval and figures over labelled ECG shards."""
