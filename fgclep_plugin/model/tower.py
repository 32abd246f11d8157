"""ECG tower: a 1D ResNet over 12-lead ECGs, shaped like an open_clip vision tower.

The tower reads its settings from the model config's ``vision_cfg`` (see :class:`EcgTowerCfg`), so a
checkpoint plus its config name fully describe the model: architecture, width, input rate and length,
and the normalisation the transform applies (see ``fgclep_plugin.model.transform``).

Two layouts of the same ResNet1d: torchvision's, translated to 1D (stem max-pool, global average head; the
defaults), and the public ResNet1d of the MERL ECG benchmark (``stem_pool: false``, ``pool: "attention"``:
no stem max-pool, so 313 time steps for 5000 samples, and an attention-pooling head).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

ECG_TOWER_KEY = "ecg_tower"
"""The ``vision_cfg`` key that marks a config as an ECG model (value: ``"resnet1d"``)."""

CFG_STATE_KEY = "ecg_vision_cfg"
"""State-dict entry of the tower (``visual.ecg_vision_cfg`` in a model): its vision_cfg as UTF-8 JSON bytes."""

TRAINING_ONLY_FIELDS = ("train_crop_length", "dropout", "zero_init_residual")
"""vision_cfg fields a checkpoint may be loaded across (they do not change what the weights mean)."""

# name -> (block type, blocks per stage)
ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet1d18": ("basic", (2, 2, 2, 2)),
    "resnet1d34": ("basic", (3, 4, 6, 3)),
    "resnet1d50": ("bottleneck", (3, 4, 6, 3)),
    "resnet1d101": ("bottleneck", (3, 4, 23, 3)),
}


@dataclass
class EcgTowerCfg:
    """ECG settings kept in ``vision_cfg``; unknown keys are rejected with their names.

    Attributes:
        ecg_tower: tower family; only ``"resnet1d"``.
        arch: one of :data:`ARCHS`.
        width: channels of the first stage (64 in the standard ResNet).
        leads: number of input leads.
        sample_rate: rate (Hz) of the model input; the transform decimates the canonical 500 Hz signal to it.
        input_length: samples per lead at ``sample_rate`` given to the model at evaluation.
        train_crop_length: if set, the training transform takes a random window of this many samples.
        norm: ``"per_lead"`` (standardise each lead of each record) or ``"fixed"`` (``mean`` / ``std``).
        mean, std: per-lead (or one shared) values in mV for ``norm="fixed"``.
        stem_pool: max-pool (k3 s2) at the end of the stem, as torchvision's ResNet; ``False`` halves the
            time steps less (the MERL benchmark's ResNet1d: 313 steps for 5000 samples instead of 157).
        pool: pooling over time: ``"avg"``, ``"max"``, ``"avgmax"`` (concatenated) or ``"attention"`` (a 1x1
            conv to ``attn_dim`` channels, then timm's ``AttentionPoolLatent``: one learned query attends
            over the time steps, with learned position embeddings for the ``input_length`` input; the
            projection below maps its output to ``embed_dim``, as the MERL head's output projection).
        attn_dim, attn_heads: width and heads of the attention pool (MERL: 256 and 4).
        proj: projection head to ``embed_dim``: ``"linear"`` or ``"mlp"``.
        dropout: dropout before the projection.
        zero_init_residual: initialise the last BatchNorm of each block to zero.
    """

    ecg_tower: str = "resnet1d"
    arch: str = "resnet1d50"
    width: int = 64
    leads: int = 12
    sample_rate: int = 500
    input_length: int = 5000
    train_crop_length: int | None = None
    norm: str = "per_lead"
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    stem_pool: bool = True
    pool: str = "avg"
    attn_dim: int = 256
    attn_heads: int = 4
    proj: str = "linear"
    dropout: float = 0.0
    zero_init_residual: bool = True

    @classmethod
    def from_vision_cfg(cls, vision_cfg: dict[str, Any]) -> EcgTowerCfg:
        """Build from a ``vision_cfg`` dict; raises ``ValueError`` naming unknown keys or bad values."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(vision_cfg) - known)
        if unknown:
            raise ValueError(f"unknown ECG vision_cfg keys {unknown}; known: {sorted(known)}")
        cfg = cls(**vision_cfg)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.ecg_tower != "resnet1d":
            raise ValueError(f"vision_cfg.ecg_tower must be 'resnet1d', got {self.ecg_tower!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"vision_cfg.arch {self.arch!r} not in {sorted(ARCHS)}")
        if self.norm not in ("per_lead", "fixed"):
            raise ValueError(f"vision_cfg.norm must be 'per_lead' or 'fixed', got {self.norm!r}")
        if self.pool not in ("avg", "max", "avgmax", "attention"):
            raise ValueError(f"vision_cfg.pool must be avg, max, avgmax or attention, got {self.pool!r}")
        if self.attn_dim <= 0 or self.attn_heads <= 0 or self.attn_dim % self.attn_heads:
            raise ValueError(
                f"vision_cfg.attn_dim ({self.attn_dim}) must be a positive multiple of attn_heads "
                f"({self.attn_heads})"
            )
        if self.pool == "attention" and self.train_crop_length not in (None, self.input_length):
            raise ValueError(
                "vision_cfg.pool 'attention' learns one position embedding per time step of input_length "
                f"({self.input_length} samples), so train_crop_length ({self.train_crop_length}) "
                "must be unset"
            )
        if self.proj not in ("linear", "mlp"):
            raise ValueError(f"vision_cfg.proj must be 'linear' or 'mlp', got {self.proj!r}")
        for name in ("mean", "std"):
            n = len(getattr(self, name))
            if n not in (1, self.leads):
                raise ValueError(f"vision_cfg.{name} needs 1 or {self.leads} values, got {n}")
        if self.norm == "fixed" and min(self.std) <= 0:
            raise ValueError("vision_cfg.std must be positive")
        if self.train_crop_length is not None and not 0 < self.train_crop_length <= self.input_length:
            raise ValueError("vision_cfg.train_crop_length must be in (0, input_length]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels)


class BasicBlock1d(nn.Module):
    """Two 3-tap convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(ch)
        self.conv2 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = _bn(ch)
        self.downsample = _shortcut(in_ch, ch, stride)

    def last_bn(self) -> nn.BatchNorm1d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out.add_(identity), inplace=True)  # BN backward needs its input, not its output


class Bottleneck1d(nn.Module):
    """1-3-1 bottleneck with 4x expansion; the stride sits on the 3-tap conv (ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1):
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv1d(in_ch, ch, 1, bias=False)
        self.bn1 = _bn(ch)
        self.conv2 = nn.Conv1d(ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(ch)
        self.conv3 = nn.Conv1d(ch, out_ch, 1, bias=False)
        self.bn3 = _bn(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def last_bn(self) -> nn.BatchNorm1d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out.add_(identity), inplace=True)  # BN backward needs its input, not its output


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv1d(in_ch, out_ch, 1, stride=stride, bias=False), _bn(out_ch))


class ResNet1d(nn.Module):
    """1D ResNet trunk: stem (conv k7 s2, BN, ReLU, optional maxpool k3 s2), four stages -> [B, C, T]."""

    def __init__(
        self,
        arch: str = "resnet1d50",
        in_channels: int = 12,
        width: int = 64,
        zero_init_residual: bool = True,
        stem_pool: bool = True,
    ):
        super().__init__()
        kind, depths = ARCHS[arch]
        block = BasicBlock1d if kind == "basic" else Bottleneck1d
        stem: list[nn.Module] = [
            nn.Conv1d(in_channels, width, 7, stride=2, padding=3, bias=False),
            _bn(width),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:  # parameter-free: the state dict is the same with and without it
            stem.append(nn.MaxPool1d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        self.halvings = 1 + int(stem_pool) + len(depths) - 1  # stem conv, stem pool, stages 2..4
        stages = []
        in_ch = width
        for i, depth in enumerate(depths):
            ch = width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(in_ch, ch, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.num_features = in_ch
        self.grad_checkpointing = False
        self._init_weights(zero_init_residual)

    def output_length(self, length: int) -> int:
        """Time steps of the trunk's output for an input of ``length`` samples."""
        for _ in range(self.halvings):  # each stride-2 layer (k7 p3, k3 p1, k1 p0) rounds up
            length = -(-length // 2)
        return length

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock1d, Bottleneck1d)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                for blk in stage:
                    x = checkpoint(
                        blk,
                        x,
                        use_reentrant=False,
                        context_fn=lambda blk=blk: (nullcontext(), _bn_stats_frozen(blk)),
                    )
            else:
                x = stage(x)
        return x


@contextmanager
def _bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged while a checkpointed block is recomputed in backward,
    so gradient checkpointing updates them once per step, exactly as without it."""
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns
    ]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class AttentionPool1d(nn.Module):
    """Attention pooling over time, [B, C, T] -> [B, dim]: a 1x1 conv to ``dim`` channels, then timm's
    ``AttentionPoolLatent`` (SigLIP's MAP head without its output projection and MLP: one learned query,
    learned position embeddings for ``steps`` time steps)."""

    def __init__(self, in_ch: int, dim: int, heads: int, steps: int):
        super().__init__()
        # imported here: timm takes seconds to import, and most uses of this module never need it
        from timm.layers import AttentionPoolLatent

        self.steps = steps
        self.reduce = nn.Conv1d(in_ch, dim, 1)
        self.attn = AttentionPoolLatent(
            dim, out_features=0, num_heads=heads, feat_size=steps, pos_embed="abs"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.steps:
            raise ValueError(
                f"the attention pool has position embeddings for {self.steps} time steps, got {x.shape[-1]}"
            )
        return self.attn(self.reduce(x).transpose(1, 2))


class EcgTower(nn.Module):
    """open_clip vision tower for ECGs: ``forward([B, leads, T]) -> [B, embed_dim]``."""

    def __init__(self, embed_dim: int, cfg: EcgTowerCfg):
        super().__init__()
        self.cfg = cfg
        self.output_dim = embed_dim
        self.trunk = ResNet1d(cfg.arch, cfg.leads, cfg.width, cfg.zero_init_residual, cfg.stem_pool)
        feat = self.trunk.num_features * (2 if cfg.pool == "avgmax" else 1)
        self.attn_pool: AttentionPool1d | None = None
        if cfg.pool == "attention":
            steps = self.trunk.output_length(cfg.input_length)
            self.attn_pool = AttentionPool1d(self.trunk.num_features, cfg.attn_dim, cfg.attn_heads, steps)
            feat = cfg.attn_dim
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.proj == "linear":
            self.proj = nn.Linear(feat, embed_dim)
        else:
            hidden = (feat + embed_dim) // 2
            self.proj = nn.Sequential(nn.Linear(feat, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self._frozen_bn: set[str] = set()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is not None:
            return self.attn_pool(x)
        if self.cfg.pool == "avg":
            return x.mean(dim=-1)
        if self.cfg.pool == "max":
            return x.amax(dim=-1)
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [B, F] (attention pool: [B, attn_dim]) before the projection (used by
        linear probing)."""
        if x.ndim != 3 or x.shape[1] != self.cfg.leads:
            raise ValueError(f"ECG tower expects [batch, {self.cfg.leads}, samples], got {tuple(x.shape)}")
        if self.attn_pool is not None and x.shape[-1] != self.cfg.input_length:
            raise ValueError(
                f"ECG tower with the attention pool expects input_length = {self.cfg.input_length} samples "
                f"(its position embeddings are learned for them), got {x.shape[-1]}"
            )
        return self.pool(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(self.forward_features(x)))

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the tower except its last ``unlocked_groups`` groups.

        Groups, first to last: stem, stage 1..4, head (attention pool if any, and projection).
        ``freeze_bn_stats`` also puts the BatchNorm layers of frozen groups in eval mode permanently (running
        statistics stop updating).
        """
        head = nn.ModuleList([m for m in (self.attn_pool, self.proj) if m is not None])
        groups: list[nn.Module] = [self.trunk.stem, *self.trunk.stages, head]
        frozen = groups[: max(len(groups) - unlocked_groups, 0)]
        for g in frozen:
            for p in g.parameters():
                p.requires_grad = False
            if freeze_bn_stats:
                frozen_ids = {id(m) for m in g.modules() if isinstance(m, _BatchNorm)}
                self._frozen_bn.update(n for n, m in self.named_modules() if id(m) in frozen_ids)
        self.train(self.training)

    def train(self, mode: bool = True) -> EcgTower:
        super().train(mode)
        # frozen BatchNorm layers keep their running statistics; looked up by name, so the freeze survives
        # module swaps such as SyncBatchNorm.convert_sync_batchnorm
        for name, m in self.named_modules():
            if name in self._frozen_bn:
                m.eval()
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.grad_checkpointing = enable

    # The state dict carries the tower's vision_cfg (uint8 JSON bytes; safe for torch.load(weights_only=True)
    # and safetensors), so a checkpoint says which ECG input it expects. Loading checks it against this
    # tower's; state dicts without the entry load as before.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        data = json.dumps(self.cfg.to_dict(), sort_keys=True).encode()
        destination[prefix + CFG_STATE_KEY] = torch.tensor(list(data), dtype=torch.uint8)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        stored = state_dict.pop(prefix + CFG_STATE_KEY, None)
        if stored is not None:
            # a field the checkpoint does not name was added later: it had the field's default behaviour
            saved = {**EcgTowerCfg().to_dict(), **json.loads(bytes(stored.to(torch.uint8).tolist()).decode())}
            mine = self.cfg.to_dict()
            diff = {
                k: (saved.get(k), mine.get(k))
                for k in sorted(set(saved) | set(mine))
                if k not in TRAINING_ONLY_FIELDS and saved.get(k) != mine.get(k)
            }
            if diff:
                error_msgs.append(
                    "the checkpoint's ECG tower was trained on another input or layout "
                    "(field: checkpoint vs model): "
                    + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def build_ecg_tower(embed_dim: int, vision_cfg: dict[str, Any]) -> EcgTower:
    """Build the ECG tower described by an ECG ``vision_cfg`` dict."""
    return EcgTower(embed_dim, EcgTowerCfg.from_vision_cfg(vision_cfg))


def is_ecg_vision_cfg(vision_cfg: Any) -> bool:
    """True when a ``vision_cfg`` (dict or dataclass) names the ECG tower."""
    return isinstance(vision_cfg, dict) and ECG_TOWER_KEY in vision_cfg
