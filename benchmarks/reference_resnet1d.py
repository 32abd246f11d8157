"""A plain, straightforward 1D ResNet-50 for ECGs: the baseline the plugin's ECG tower is measured against.

Textbook layout (torchvision's ResNet translated to 1D): conv7/2 stem, maxpool, four stages of bottleneck
blocks (1-3-1, stride on the 3-tap conv), global average pooling, linear projection. No speed tricks.
The MERL benchmark's layout: no stem maxpool (``stem_pool=False``) and an attention-pooling head
(``attention=(dim, heads)``): 1x1 conv to ``dim`` channels, learned position embeddings, one learned query,
multi-head attention written out with einsum, then the linear projection.
"""

from __future__ import annotations

import torch
from torch import nn


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv1d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.conv3 = nn.Conv1d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm1d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class RefAttentionPool(nn.Module):
    """[B, C, T] -> [B, dim]: softmax(q k^T / sqrt(d)) v per head, q from one learned query vector."""

    def __init__(self, in_channels: int, dim: int, heads: int, steps: int):
        super().__init__()
        self.heads = heads
        self.down = nn.Conv1d(in_channels, dim, kernel_size=1)
        self.pos = nn.Parameter(torch.zeros(steps, dim))
        self.query = nn.Parameter(torch.zeros(dim))
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        nn.init.normal_(self.pos, std=dim**-0.5)
        nn.init.normal_(self.query, std=dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x).transpose(1, 2) + self.pos  # [B, T, dim]
        b, t, dim = h.shape
        d = dim // self.heads
        q = self.wq(self.query).view(self.heads, d)
        k = self.wk(h).view(b, t, self.heads, d)
        v = self.wv(h).view(b, t, self.heads, d)
        weights = torch.softmax(torch.einsum("hd,bthd->bht", q, k) / d**0.5, dim=-1)
        return torch.einsum("bht,bthd->bhd", weights, v).reshape(b, dim)


class RefResNet1d50(nn.Module):
    """ECG [B, 12, T] -> embedding [B, embed_dim]; ``attention`` needs the ``input_length`` it will see."""

    def __init__(
        self,
        embed_dim: int = 256,
        in_channels: int = 12,
        width: int = 64,
        stem_pool: bool = True,
        attention: tuple[int, int] | None = None,
        input_length: int = 5000,
    ):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv1d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        self.layer1 = self._make_layer(width, 3, 1)
        self.layer2 = self._make_layer(width * 2, 4, 2)
        self.layer3 = self._make_layer(width * 4, 6, 2)
        self.layer4 = self._make_layer(width * 8, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.attnpool = None
        features = width * 8 * 4
        if attention is not None:
            steps = input_length
            for _ in range(5 if stem_pool else 4):  # stride-2 layers; each output is ceil(n / 2) long
                steps = (steps + 1) // 2
            self.attnpool = RefAttentionPool(features, attention[0], attention[1], steps)
            features = attention[0]
        self.fc = nn.Linear(features, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv1d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm1d(planes * 4),
            )
        layers = [RefBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        for _ in range(1, blocks):
            layers.append(RefBottleneck(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = torch.flatten(self.avgpool(x), 1) if self.attnpool is None else self.attnpool(x)
        return self.fc(pooled)
