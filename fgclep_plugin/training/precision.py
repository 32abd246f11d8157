"""The training precision to use where none is given: bf16 autocast only where the hardware has bf16.

Measured on this project's 2-core machines (docs/results.md): bf16 autocast roughly doubles
training throughput on a CPU with native bf16 instructions (AVX512-BF16 / AMX), and makes the text tower's
backward pass about 30x slower on one without them (an AVX2-only AMD EPYC), where it is emulated.
"""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty where the file does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16(device: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes bf16 natively (CUDA: ``torch.cuda.is_bf16_supported``; CPU: its flags)."""
    if device.startswith("cuda"):
        import torch  # only for CUDA: the CPU answer (and the demo's argument parsing) need no torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: str = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``auto`` -> ``amp_bf16`` where ``device`` has native bf16, else ``fp32``; any other value unchanged."""
    if precision != "auto":
        return precision
    return "amp_bf16" if native_bf16(device, cpuinfo) else "fp32"
