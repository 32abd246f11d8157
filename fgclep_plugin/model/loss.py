"""FG-CLEP loss: open_clip's SigLIP sigmoid loss plus the false-negative mitigation (FNM) term.

``L = L_sig + lambda * L_fnm`` with Eq. 6, ``L_fnm = (1/B) sum_i sum_j |cos(e_i, t_j) - S_ij|`` and
``S_ij = cos(t_i, t_j)`` (e: ECG embeddings, t: report embeddings): summed over the B x B pairs and divided by B,
the normalisation of ``L_sig`` (``norm="paper"``, default). ``norm="mean"`` divides by B x B instead (B times
weaker; this project's behaviour before the paper's normalisation). The sigmoid part is
``open_clip.loss.SigLipLoss`` itself, so every one of its distributed implementations (``bidir``, ``shift``,
``reduce``, ``gather``) keeps working.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss, gather_features

FNM_NORMS = ("paper", "mean")


def fnm_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    all_text_features: torch.Tensor | None = None,
    detach_semantic: bool = True,
    norm: str = "paper",
) -> torch.Tensor:
    """False-negative mitigation term (FG-CLEP Eq. 6).

    Rows are the ``R`` local ECGs ``e_i`` with their own reports ``t_i``; columns are the ``C`` reports ``t_j`` of
    ``all_text_features`` (defaults to ``text_features``). With ``d_ij = |cos(e_i, t_j) - cos(t_i, t_j)|``
    returns ``sum_ij d_ij / R`` (``norm="paper"``, Eq. 6) or ``sum_ij d_ij / (R C)`` (``norm="mean"``). Dividing
    by the local rows (as ``SigLipLoss`` divides by the local batch) makes the mean over ranks of the per-rank
    values, with columns gathered over ranks, the one-process value over the global batch in both cases.
    With ``detach_semantic`` the target ``S`` carries no gradient. Computed in float32, also under autocast.
    """
    if norm not in FNM_NORMS:
        raise ValueError(f"FNM normalisation must be one of {FNM_NORMS}, got {norm!r}")
    columns = text_features if all_text_features is None else all_text_features
    # float32 even inside autocast (open_clip computes the loss under --precision amp/amp_bf16): the term is a
    # small difference of two cosines, which half-precision matmuls would bury in rounding error
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        e = F.normalize(image_features.float(), dim=-1)
        t_rows = F.normalize(text_features.float(), dim=-1)
        t_cols = F.normalize(columns.float(), dim=-1)
        cross = e @ t_cols.T
        semantic = t_rows @ t_cols.T
        if detach_semantic:
            semantic = semantic.detach()
        distance = (cross - semantic).abs()
        return distance.sum() / distance.shape[0] if norm == "paper" else distance.mean()


class FgClepLoss(SigLipLoss):
    """SigLIP loss plus ``fnm_lambda`` times the FNM term; logs the two terms under separate keys.

    Args:
        fnm_lambda: weight of the FNM term (paper: 0.5). 0 gives exactly ``SigLipLoss``.
        fnm_norm: ``"paper"`` (Eq. 6: sum over the pairs / batch size, default) or ``"mean"`` (mean over the
            pairs, B times weaker at batch size B, so lambda's meaning changes with the batch and world size).
        detach_semantic: treat ``S = cos(t_i, t_j)`` as a fixed target (default ``True``). Without the
            detach, the FNM gradient also moves report embeddings so that report-report similarity matches
            ECG-report similarity; since SigLIP drives off-diagonal ECG-report similarities down, that
            would push different reports that say the same thing apart, the very false negatives FNM
            is meant to protect. Detached, S only steers the ECG-report similarities, as in the paper's
            framing of S as the semantic target.
        fnm_global: in multi-process runs compute FNM for the local ECGs against the reports of the whole
            gathered global batch (default ``True``; features gathered with gradients). Each rank divides by
            its local batch size, as ``SigLipLoss`` does, so the mean over ranks (DDP averages the gradients)
            equals the single-process FNM over the same global batch, for either ``fnm_norm``. With
            ``False`` each rank uses only its local batch (fewer pairs, no communication).
        rank, world_size, dist_impl, cache_labels: as for ``open_clip.loss.SigLipLoss``.

    ``forward(...)`` returns ``{"contrastive_loss": L_sig, "fnm_loss": lambda * L_fnm}`` when
    ``output_dict`` (open_clip's train loop sums the values and logs each) or their sum.
    """

    def __init__(
        self,
        fnm_lambda: float = 0.5,
        detach_semantic: bool = True,
        fnm_global: bool = True,
        fnm_norm: str = "paper",
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
    ):
        super().__init__(cache_labels=cache_labels, rank=rank, world_size=world_size, dist_impl=dist_impl)
        if fnm_lambda < 0:
            raise ValueError(f"fnm_lambda must be >= 0, got {fnm_lambda}")
        if fnm_norm not in FNM_NORMS:
            raise ValueError(f"fnm_norm must be one of {FNM_NORMS}, got {fnm_norm!r}")
        self.fnm_lambda = float(fnm_lambda)
        self.fnm_norm = fnm_norm
        self.detach_semantic = detach_semantic
        self.fnm_global = fnm_global

    def _loss(self, image_features, text_features, logit_scale, logit_bias=None, negative_only=False):
        """``SigLipLoss._loss`` (one block of the B x B pairs; every distributed implementation calls it) through
        :func:`sigmoid_loss`, the term :class:`MultiPositiveLoss` uses too."""
        b = image_features.shape[0]
        signs = self.get_ground_truth(
            image_features.device, image_features.dtype, b, negative_only=negative_only
        )
        return sigmoid_loss(image_features, text_features, signs, logit_scale, logit_bias)

    def fnm(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Unweighted FNM term on this rank (local rows; local or global columns per ``fnm_global``)."""
        all_text = None
        if self.fnm_global and self.world_size > 1:
            _, all_text = gather_features(
                image_features,
                text_features,
                gather_with_grad=True,
                rank=self.rank,
                world_size=self.world_size,
            )
        return fnm_loss(
            image_features, text_features, all_text, detach_semantic=self.detach_semantic, norm=self.fnm_norm
        )

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        output_dict: bool = False,
    ):
        contrastive = super().forward(
            image_features, text_features, logit_scale, logit_bias, output_dict=False
        )
        return self.plus_fnm(contrastive, image_features, text_features, output_dict)

    def plus_fnm(
        self,
        contrastive: torch.Tensor,
        image_features: torch.Tensor,
        report_features: torch.Tensor,
        output_dict: bool,
    ):
        """``contrastive`` and ``fnm_lambda`` times the FNM term of the ECGs against their reports: as
        ``{"contrastive_loss", "fnm_loss"}`` when ``output_dict``, else their sum."""
        if self.fnm_lambda:
            weighted_fnm = self.fnm_lambda * self.fnm(image_features, report_features)
        else:
            weighted_fnm = contrastive.new_zeros(())
        if output_dict:
            return {"contrastive_loss": contrastive, "fnm_loss": weighted_fnm}
        return contrastive + weighted_fnm


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    signs: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The SigLIP sigmoid term over every (ECG, text) pair: ``-(1/B) sum_ij log sigmoid(z_ij (t e_i.t_j + b))``
    over the B ECGs ``e_i`` and M texts ``t_j``, with ``signs`` ``z`` ``[B, M]`` (+1 positive, -1 negative).
    The pair logits and the loss of ``open_clip.loss.SigLipLoss`` (its ``get_logits`` and ``_loss``)."""
    logits = logit_scale * image_features @ text_features.T  # [B, M]
    if logit_bias is not None:
        logits = logits + logit_bias
    return -F.logsigmoid(signs * logits).sum() / image_features.shape[0]


def multi_positive_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positives: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Sigmoid loss with any number of positive texts per ECG: :func:`sigmoid_loss` with ``z_ij = +1`` where
    ``positives[i, j]`` else -1. With ``positives = eye(B)`` this is ``SigLipLoss`` (one process)."""
    signs = 2.0 * positives.to(image_features.dtype) - 1.0
    return sigmoid_loss(image_features, text_features, signs, logit_scale, logit_bias)


class MultiPositiveLoss(FgClepLoss):
    """:class:`FgClepLoss` for ``--ecg-feature-injection multi-positive`` batches: the sigmoid term over every
    (ECG, text) pair with ``positives`` ``[B, M]`` from the batch (texts: the B reports, then the batch's kept
    features; ``fgclep_plugin.training.injection``), FNM on the B ECG-report pairs. One process only. Without
    ``positives`` it is :class:`FgClepLoss`."""

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        positives: torch.Tensor | None = None,
        output_dict: bool = False,
    ):
        if positives is None:
            return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict)
        if self.world_size > 1:
            raise NotImplementedError("the multi-positive loss runs in one process (world size 1)")
        b = image_features.shape[0]
        contrastive = multi_positive_sigmoid_loss(
            image_features, text_features, positives, logit_scale, logit_bias
        )
        return self.plus_fnm(contrastive, image_features, text_features[:b], output_dict)


def create_fgclep_loss(args: Any) -> FgClepLoss:
    """Build the loss from open_clip_train args plus ``fnm_lambda``, ``fnm_detach``, ``fnm_global``, ``fnm_norm``.

    Missing plugin args take the defaults (0.5, detached, global, the paper's normalisation).
    """
    multi = getattr(args, "ecg_feature_injection", "append") == "multi-positive"
    return (MultiPositiveLoss if multi else FgClepLoss)(
        fnm_lambda=getattr(args, "fnm_lambda", 0.5),
        detach_semantic=getattr(args, "fnm_detach", True),
        fnm_global=getattr(args, "fnm_global", True),
        fnm_norm=getattr(args, "fnm_norm", "paper"),
        rank=args.rank,
        world_size=args.world_size,
        dist_impl=getattr(args, "loss_dist_impl", None),
    )
