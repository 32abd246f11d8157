"""Per-sample ECG transform: the open_clip ``preprocess`` of an ECG model.

Input is a canonical ECG ``[leads, N]`` at 500 Hz (float16/float32 numpy array or tensor, mV). The transform
decimates to the model's ``sample_rate`` (an integer factor, after a linear-phase FIR anti-alias low-pass:
:func:`antialias_kernel`), takes a window of the model's length (centre window at evaluation, random window of
``train_crop_length`` in training; zero-pads short records), and normalises as the model config says. Output:
float32 tensor ``[leads, L]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy.signal import firwin, kaiserord

from .tower import EcgTowerCfg

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
"""Signal dtypes widened to float32 by torch; any other dtype is converted by numpy first."""

CANONICAL_FS = 500
"""Sampling rate (Hz) of canonical ECGs in shards."""

STD_FLOOR_MV = 0.02
"""Smallest standard deviation (mV) a lead is divided by in ``per_lead`` normalisation. Real leads lie above it
(lowest per-lead std measured: 0.027 mV over the 200 LUDB records, 0.035 mV in the CPSC2018 sample, 0.047 mV in
the PTB-XL sample), while amplifier noise on a disconnected lead is a few uV: such a lead comes out at about
noise / 0.02 mV (0.1 for 2 uV) instead of at the full scale of a real lead."""

PASSBAND_FRACTION = 0.8
"""Anti-alias pass-band edge as a fraction of the new Nyquist rate (100 Hz for 250 Hz); the stop band starts at
the new Nyquist rate itself, so nothing above it folds back."""

STOPBAND_DB = 60.0
"""Attenuation of the anti-alias filter's stop band (Kaiser window design)."""


@lru_cache(maxsize=8)
def antialias_kernel(factor: int) -> torch.Tensor:
    """Linear-phase FIR low-pass (Kaiser window, ``scipy.signal.firwin``) for decimation by ``factor``, as a
    ``[1, 1, taps]`` conv1d weight: pass band flat to ``PASSBAND_FRACTION`` of the new Nyquist rate, at least
    ``STOPBAND_DB`` down from the new Nyquist rate on. For 500 -> 250 Hz: 75 taps, -60 dB from 125 Hz (a 2-sample
    mean had -3 dB at 125 Hz and passed the 150 Hz mains harmonic at -4.6 dB, folding it to 100 Hz)."""
    nyq_out = 0.5 / factor  # new Nyquist rate in cycles per input sample
    taps, beta = kaiserord(STOPBAND_DB, (1 - PASSBAND_FRACTION) * nyq_out * 2)
    taps += 1 - taps % 2  # odd: a whole-sample delay, removed by centring
    h = firwin(taps, (1 + PASSBAND_FRACTION) / 2 * nyq_out, window=("kaiser", beta), fs=1.0)
    return torch.tensor(h, dtype=torch.float32).reshape(1, 1, -1)


@lru_cache(maxsize=8)
def _lead_kernels(factor: int, leads: int) -> torch.Tensor:
    return antialias_kernel(factor).expand(leads, 1, -1).contiguous()


def decimate(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[leads, N]`` -> ``[leads, ceil(N / factor)]`` (or a batch ``[B, leads, N]`` -> ``[B, leads, ...]``):
    anti-alias filter and keep every ``factor``-th sample, in one strided, grouped conv1d (only the kept samples
    are computed; as fast as the block mean it replaced); output ``k`` is centred on input ``k * factor``. The
    ends are extended with the edge value, so a baseline offset does not ring."""
    leads = x.shape[-2]
    h = _lead_kernels(factor, leads)
    pad = (h.shape[-1] - 1) // 2
    y = torch.cat([x[..., :1].expand(*x.shape[:-1], pad), x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
    out = torch.nn.functional.conv1d(y.reshape(-1, leads, y.shape[-1]), h, stride=factor, groups=leads)
    return out.reshape(*x.shape[:-1], out.shape[-1])


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
        return self._apply(x.to(torch.float32))

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation transform of a batch of ECGs of one length, ``[B, leads, N]`` float32 -> ``[B, leads,
        L]``: the same operations as one call per ECG (one window for all, so not in training), each over the
        whole batch on every torch thread. Raises ``ValueError`` on a non-finite result without naming the ECG
        (transform one by one to find it)."""
        if self.is_train:
            raise ValueError("a training transform draws a window per ECG: call it per ECG")
        if x.ndim != 3 or x.shape[1] != self.cfg.leads or x.dtype != torch.float32:
            raise ValueError(
                f"ECG batch transform expects float32 [B, {self.cfg.leads}, samples], got {x.shape}"
            )
        return self._apply(x)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., leads, N]`` float32 -> ``[..., leads, L]``: decimate, window, normalise, check."""
        if self.factor > 1:
            x = decimate(x, self.factor)
        x = self._window(x)
        if self.cfg.norm == "per_lead":
            std, mean = torch.std_mean(x, dim=-1, keepdim=True)
            x = (x - mean).div_(std.clamp_min_(STD_FLOOR_MV))
        else:
            x = (x - self.mean) / self.std
        # the sum is finite when every value is (float16-range inputs cannot overflow it): one cheap check,
        # the exact one only when it fails
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ValueError("ECG transform produced non-finite values (NaN/inf in the input signal)")
        return x.contiguous()

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[-1], self.length
        if n < length:
            return torch.nn.functional.pad(x, (0, length - n))
        if self.is_train:
            start = int(torch.randint(0, n - length + 1, ()).item())
        else:
            start = (n - length) // 2
        return x[..., start : start + length]


def ecg_transforms(vision_cfg: EcgTowerCfg | dict[str, Any]) -> tuple[EcgTransform, EcgTransform]:
    """(train, val) transforms for a model's ECG ``vision_cfg``."""
    cfg = vision_cfg if isinstance(vision_cfg, EcgTowerCfg) else EcgTowerCfg.from_vision_cfg(vision_cfg)
    return EcgTransform(cfg, is_train=True), EcgTransform(cfg, is_train=False)


def batch_to_tensor(ecgs: Sequence[np.ndarray], preprocess: Callable | None) -> torch.Tensor | None:
    """``[B, leads, L]``: ECGs of one shape and float dtype through one batched evaluation transform
    (:meth:`EcgTransform.batch`); ``None`` when they cannot go as one batch (shapes or dtypes differ, a training
    or foreign transform, a non-finite result): transform them one by one (:func:`ecg_to_tensor`)."""
    arrays = [np.asarray(e) for e in ecgs]
    if (
        not arrays
        or not isinstance(preprocess, EcgTransform)
        or preprocess.is_train
        or len({(a.shape, a.dtype) for a in arrays}) != 1
        or arrays[0].dtype not in FLOAT_DTYPES
    ):
        return None
    try:
        return preprocess.batch(torch.from_numpy(np.stack(arrays)).to(torch.float32))
    except ValueError:  # a bad ECG: the per-ECG transform names it
        return None


def ecg_to_tensor(ecg: np.ndarray, preprocess: Callable | None) -> torch.Tensor:
    """Canonical float16 ECG -> float32 tensor, then the model's transform (if any)."""
    a = np.asarray(ecg)
    if a.dtype in FLOAT_DTYPES:  # torch widens float16 faster than numpy does (same values)
        x = torch.from_numpy(np.require(a, requirements=("C", "W"))).to(torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return preprocess(x) if preprocess is not None else x
