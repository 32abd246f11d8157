"""Per-sample ECG transform: the open_clip ``preprocess`` of an ECG model.

Input is a canonical ECG ``[leads, N]`` at 500 Hz (float16/float32 numpy array or tensor, mV). The transform
decimates to the model's ``sample_rate`` (block mean, an integer factor), takes a window of the model's
length (centre window at evaluation, random window of ``train_crop_length`` in training; zero-pads short
records), and normalises as the model config says. Output: float32 tensor ``[leads, L]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .tower import EcgTowerCfg

CANONICAL_FS = 500
"""Sampling rate (Hz) of canonical ECGs in shards."""

_EPS = 1e-6


class EcgTransform:
    """Callable ``ecg [leads, N] -> float32 tensor [leads, L]``; picklable (safe in DataLoader workers)."""

    def __init__(self, cfg: EcgTowerCfg, is_train: bool = False, source_fs: int = CANONICAL_FS):
        cfg.validate()
        if source_fs % cfg.sample_rate:
            raise ValueError(
                f"model sample_rate {cfg.sample_rate} Hz must divide the source rate {source_fs} Hz"
            )
        self.cfg = cfg
        self.is_train = is_train
        self.factor = source_fs // cfg.sample_rate
        self.length = cfg.train_crop_length if (is_train and cfg.train_crop_length) else cfg.input_length
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).reshape(-1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).reshape(-1, 1)

    def __repr__(self) -> str:
        return (
            f"EcgTransform(train={self.is_train}, decimate={self.factor}, length={self.length}, "
            f"norm={self.cfg.norm!r})"
        )

    def __call__(self, ecg: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(ecg)) if not isinstance(ecg, torch.Tensor) else ecg
        if x.ndim != 2 or x.shape[0] != self.cfg.leads:
            raise ValueError(f"ECG transform expects [{self.cfg.leads}, samples], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"ECG transform expects a floating-point signal, got {x.dtype}")
        x = x.to(torch.float32)
        if self.factor > 1:
            n = x.shape[1] // self.factor * self.factor
            x = x[:, :n].reshape(x.shape[0], -1, self.factor).mean(dim=2)
        x = self._window(x)
        if self.cfg.norm == "per_lead":
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + _EPS)
        else:
            x = (x - self.mean) / self.std
        if not torch.isfinite(x).all():
            raise ValueError("ECG transform produced non-finite values (NaN/inf in the input signal)")
        return x.contiguous()

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[1], self.length
        if n < length:
            return torch.nn.functional.pad(x, (0, length - n))
        if self.is_train:
            start = int(torch.randint(0, n - length + 1, ()).item())
        else:
            start = (n - length) // 2
        return x[:, start : start + length]


def ecg_transforms(vision_cfg: EcgTowerCfg | dict[str, Any]) -> tuple[EcgTransform, EcgTransform]:
    """(train, val) transforms for a model's ECG ``vision_cfg``."""
    cfg = vision_cfg if isinstance(vision_cfg, EcgTowerCfg) else EcgTowerCfg.from_vision_cfg(vision_cfg)
    return EcgTransform(cfg, is_train=True), EcgTransform(cfg, is_train=False)
