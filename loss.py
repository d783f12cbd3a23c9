"""ISDA's class-conditional statistics, the augmented (ISDA upper-bound) logits and the
long-tail losses that MetaSAug puts on top of them (the registry ``BASE_LOSSES``: cross-entropy,
focal, LDAM and logit-adjusted cross-entropy), optionally re-weighted with class-balanced weights.

Everything here follows the authors' released code (docs/faithfulness.md, "Deviations from the released
code", lists the few places that differ in form but not in value) and works in any float dtype on any device:
results take the dtype and device of the logits.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def class_balanced_weights(cls_num_list, beta=0.9999):
    """Cui et al. (2019) effective-number weights ``(1 - beta) / (1 - beta^n_c)``, summing to C.

    Returned in float64; the losses cast them to the logits' dtype.
    """
    counts = np.asarray(cls_num_list, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or (counts <= 0).any():
        raise ValueError(f"cls_num_list must be a non-empty list of positive counts, got {list(cls_num_list)}")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.from_numpy(weights / weights.sum() * len(counts))


def ldam_margins(cls_num_list, max_m=0.5):
    """Cao et al. (2019) label-distribution-aware margins ``n_c^(-1/4)``, the largest equal to ``max_m``."""
    counts = np.asarray(cls_num_list, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or (counts <= 0).any():
        raise ValueError(f"cls_num_list must be a non-empty list of positive counts, got {list(cls_num_list)}")
    margins = 1.0 / np.sqrt(np.sqrt(counts))
    return torch.from_numpy(margins * (max_m / margins.max()))


def log_prior(cls_num_list):
    """``log pi_c`` of the training class prior ``pi_c = n_c / sum n``: Menon et al.'s (ICLR 2021) logit
    adjustment with tau = 1 adds it to every logit in the loss (not at test), in float64."""
    counts = np.asarray(cls_num_list, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or (counts <= 0).any():
        raise ValueError(f"cls_num_list must be a non-empty list of positive counts, got {list(cls_num_list)}")
    return torch.from_numpy(np.log(counts / counts.sum()))


def _add_to_every_logit(logits, labels, adjustment):
    return logits + adjustment.to(logits)


def _subtract_true_class_margin(logits, labels, margins):
    true_class = F.one_hot(labels, logits.shape[1]).bool()
    return logits - true_class * margins.to(logits)[labels].unsqueeze(1)


@dataclass(frozen=True)
class BaseLoss:
    """A base loss: what it minimises in words (runs whose words are equal train the same first phase;
    ``{gamma}`` and ``{max_m}`` are filled in), and for a loss that moves the logits by a per-class
    constant, the ``MetaSAugLoss`` buffer that holds it (``constant``), how it is built from the class
    counts (``build(cls_num_list, max_m=...)``) and how it moves the logits (``apply(logits, labels,
    constant)``). ``focal``: the focal form of the cross-entropy on the (moved) logits."""
    words: str
    constant: str = None
    build: Callable = None
    apply: Callable = None
    focal: bool = False

    def describe(self, gamma, max_m):
        return self.words.format(gamma=gamma, max_m=max_m)


# The one registry of base losses: the scripts' --loss choices, the first-phase check and the planner read it.
BASE_LOSSES = {
    "ce": BaseLoss("cross-entropy"),
    "focal": BaseLoss("focal loss (gamma {gamma})", focal=True),
    "ldam": BaseLoss("LDAM loss (max_m {max_m})", "margins", lambda counts, max_m: ldam_margins(counts, max_m),
                     _subtract_true_class_margin),
    "la": BaseLoss("logit-adjusted cross-entropy (tau 1)", "log_prior", lambda counts, max_m: log_prior(counts),
                   _add_to_every_logit),
}
BASES = tuple(BASE_LOSSES)


def _check_labels(labels, num_samples, num_classes):
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"labels must have shape [{num_samples}], got {list(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if num_samples and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


class EstimatorCV(nn.Module):
    """ISDA's online class-wise feature mean and covariance (Wang et al. 2019).

    ``covariance`` is ``[C, A, A]`` (full, CIFAR) or ``[C, A]`` (diagonal, ImageNet/iNat).
    The statistics are buffers, so they move with ``.to()`` and are saved in ``state_dict()``;
    ``update`` also moves them to the features' device and, if more precise, their dtype.
    """

    def __init__(self, feature_dim, num_classes, diagonal=False):
        super().__init__()
        self.feature_dim, self.num_classes, self.diagonal = feature_dim, num_classes, diagonal
        cov_shape = (num_classes, feature_dim) if diagonal else (num_classes, feature_dim, feature_dim)
        self.register_buffer("covariance", torch.zeros(cov_shape))
        self.register_buffer("mean", torch.zeros(num_classes, feature_dim))
        self.register_buffer("amount", torch.zeros(num_classes))

    @torch.no_grad()
    def update(self, features, labels):
        """Merge one batch's per-class (biased) mean and covariance into the running statistics.

        With ``w = n_c / (n_c + count_c)`` the merge is exact for the pooled covariance:
        ``cov <- (1-w) cov + w S_b + w (1-w) (mean - mu_b)(mean - mu_b)^T``.
        Classes absent from the batch get ``w = 0`` and stay unchanged.
        """
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape [N, {self.feature_dim}], got {list(features.shape)}")
        _check_labels(labels, features.shape[0], self.num_classes)
        # Never lose precision: float64 features promote the state, bf16 ones (autocast) do not demote it.
        dtype = torch.promote_types(self.covariance.dtype, features.dtype)
        self.to(device=features.device, dtype=dtype)
        features = features.detach().to(dtype)
        onehot = F.one_hot(labels, self.num_classes).to(features.dtype)
        counts = onehot.sum(0)
        per_class = counts.clamp(min=1)
        batch_mean = onehot.t() @ features / per_class[:, None]
        centered = features - batch_mean[labels]
        if self.diagonal:
            outer = centered * centered
        else:
            outer = (centered[:, :, None] * centered[:, None, :]).flatten(1)
        # A matrix product sums per class deterministically (index_add_ uses atomics on CUDA).
        batch_cov = (onehot.t() @ outer).view_as(self.covariance)
        batch_cov /= per_class.view(-1, *[1] * (batch_cov.dim() - 1))

        weight = torch.where(counts > 0, counts / (counts + self.amount), torch.zeros_like(counts))
        shift = self.mean - batch_mean
        if self.diagonal:
            spread = shift * shift
        else:
            spread = shift[:, :, None] * shift[:, None, :]
        w = weight.view(-1, *[1] * (batch_cov.dim() - 1))
        self.covariance = self.covariance * (1 - w) + batch_cov * w + w * (1 - w) * spread
        self.mean = self.mean * (1 - weight[:, None]) + batch_mean * weight[:, None]
        self.amount = self.amount + counts


def _full_quadratic(fc_weight, labels, covariance):
    """``(w_c - w_y)^T Sigma_y (w_c - w_y)`` for every sample and class, Sigma_y full.

    Expanded as ``w_c'S w_c - w_c'S w_y - w_y'S w_c + w_y'S w_y`` (no symmetry assumed, so the
    gradient w.r.t. Sigma is the released one), computed per class when C <= N and per sample
    otherwise: at most ``N * C * A`` memory instead of the released ``N x C x C`` products.
    """
    num_samples, num_classes = labels.shape[0], fc_weight.shape[0]
    if num_classes <= num_samples:
        by_class = (torch.matmul(fc_weight.unsqueeze(0), covariance) * fc_weight).sum(-1)
        quad = by_class[labels]
    else:
        quad = (torch.matmul(fc_weight.unsqueeze(0), covariance[labels]) * fc_weight).sum(-1)
    cov_w = torch.einsum("kab,kb->ka", covariance, fc_weight)
    cov_t_w = torch.einsum("kba,kb->ka", covariance, fc_weight)
    own = (fc_weight * cov_w).sum(-1)
    cross = (cov_w + cov_t_w)[labels] @ fc_weight.t()
    return quad - cross + own[labels].unsqueeze(1)


def _diagonal_quadratic(fc_weight, labels, variance):
    """``sum_a (w_c - w_y)_a^2 sigma_{y,a}``: matrix products of size N x C only (C = 8142 is fine)."""
    var_y, w_y = variance[labels], fc_weight[labels]
    quad = var_y @ (fc_weight * fc_weight).t()
    cross = (var_y * w_y) @ fc_weight.t()
    own = (var_y * w_y * w_y).sum(-1, keepdim=True)
    return quad - 2 * cross + own


def isda_aug_logits(logits, fc_weight, labels, covariance, ratio):
    """Augmented logits of the ISDA bound: ``z_c + ratio/2 (w_c - w_y)^T Sigma_y (w_c - w_y)``.

    ``covariance`` is full ``[C, A, A]`` or diagonal ``[C, A]`` (chosen by its shape). The
    true-class term is zero exactly, as in the released code.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {list(logits.shape)}")
    num_samples, num_classes = logits.shape
    if fc_weight.dim() != 2 or fc_weight.shape[0] != num_classes:
        raise ValueError(f"fc_weight must have shape [{num_classes}, A], got {list(fc_weight.shape)}")
    dim = fc_weight.shape[1]
    if tuple(covariance.shape) not in ((num_classes, dim, dim), (num_classes, dim)):
        raise ValueError(f"covariance must have shape [{num_classes}, {dim}, {dim}] (full) or "
                         f"[{num_classes}, {dim}] (diagonal), got {list(covariance.shape)}")
    _check_labels(labels, num_samples, num_classes)
    covariance = covariance.to(fc_weight.dtype)
    if covariance.dim() == 2:
        sigma2 = _diagonal_quadratic(fc_weight, labels, covariance)
    else:
        sigma2 = _full_quadratic(fc_weight, labels, covariance)
    true_class = F.one_hot(labels, num_classes).bool()
    sigma2 = (ratio * sigma2).masked_fill(true_class, 0)
    return logits + 0.5 * sigma2


def classification_loss(logits, labels, base="ce", class_weights=None, constant=None, gamma=1.0, scale=1.0):
    """The base losses of ``BASE_LOSSES``, on plain or augmented logits; ``constant`` is the base's
    per-class constant (``MetaSAugLoss.constant``), where it has one.

    - ``ce``: ``cross_entropy(logits, y, weight=class_weights)`` (weighted mean).
    - ``ldam``: the margins ``constant[y]`` subtracted from the true-class logit, then the same
      cross-entropy; no scale ``s``, as in the released MetaSAug code.
    - ``la``: the log class prior ``constant`` added to every logit, then the same cross-entropy (Menon
      et al. 2021, tau = 1); the model's own logits are what it predicts with.
    - ``scale``: the logits (margins subtracted) are multiplied by it before the softmax: Cao et al.'s
      ``s = 30`` with their normalised classifier; 1 otherwise.
    - ``focal``: ``sum_n w_y (1 - p_y)^gamma (-log p_y) / sum_n w_y`` with ``p = softmax(logits)``
      (Lin et al. 2017 on the softmax; ``gamma = 0`` gives ``ce`` exactly). The authors released no
      focal code; this normalisation matches ``ce``'s weighted mean.
    """
    if base not in BASE_LOSSES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    spec = BASE_LOSSES[base]
    weight = None if class_weights is None else class_weights.to(logits)
    if spec.apply is not None:
        if constant is None:
            raise ValueError(f"base {base!r} needs its per-class {spec.constant} (MetaSAugLoss.constant)")
        logits = spec.apply(logits, labels, constant)
    if scale != 1.0:
        logits = scale * logits
    if not spec.focal:
        return F.cross_entropy(logits, labels, weight=weight)
    log_p = F.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    per_sample = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return per_sample.mean()
    sample_weight = weight[labels]
    return (sample_weight * per_sample).sum() / sample_weight.sum()


class MetaSAugLoss(nn.Module):
    """The training loss of MetaSAug: a base loss on ISDA-augmented logits, class-balanced weighted.

    Holds the ISDA ``estimator`` (updated by ``MetaSAug.step``, or by the caller) and the per-class
    constants as buffers. ``beta=None`` turns re-weighting off.
    """

    def __init__(self, feature_dim, num_classes, cls_num_list, base="ce", diagonal=False,
                 beta=0.9999, max_m=0.5, gamma=1.0):
        super().__init__()
        if base not in BASE_LOSSES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        if len(cls_num_list) != num_classes:
            raise ValueError(f"cls_num_list has {len(cls_num_list)} entries but num_classes={num_classes}")
        self.base, self.gamma = base, gamma
        self.estimator = EstimatorCV(feature_dim, num_classes, diagonal)
        weights = None if beta is None else class_balanced_weights(cls_num_list, beta)
        self.register_buffer("class_weights", weights)
        spec = BASE_LOSSES[base]
        if spec.constant is not None:
            self.register_buffer(spec.constant, spec.build(cls_num_list, max_m=max_m))

    @property
    def constant(self):
        """The base loss's per-class constant (LDAM's margins), or None."""
        name = BASE_LOSSES[self.base].constant
        return None if name is None else getattr(self, name)

    def forward(self, logits, fc_weight, labels, covariance, ratio):
        augmented = isda_aug_logits(logits, fc_weight, labels, covariance, ratio)
        return classification_loss(augmented, labels, self.base, self.class_weights, self.constant, self.gamma)
