"""Agreement metrics, the CCC loss and the CCC-centering fusion of fold predictions (SPEC §5, §6).

It lives in the training stage, its main user (loss, epoch selection); prediction imports it for the
fold fusion and the validation figures.

Convention: population statistics (divide by N) in the metric, as AVEC and ``audmetric.concordance_cc``:

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)

Two places follow the authors' arithmetic under their recipe (``recipe=authors``, the default):
``authors_ccc_loss`` (covariance / N, variances / (N - 1), every frame of a window) and
``ccc_centering(..., style="authors")`` (fold agreements from ``sample_ccc``, negatives kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from configs import EMOTIONS

LOSS_EPS = 1e-8  # added to the loss denominator: keeps 1 - CCC differentiable for constant windows
METRIC_NAMES = ("ccc", "pcc", "rmse")


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"sequences differ in length: {x.size} vs {y.size}")
    return x, y


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient of two sequences (population statistics).

    Returns 0.0 where it is undefined (both sequences constant and equal, or fewer than 2 values),
    so that a collapsed model never looks good when selecting epochs.

    >>> ccc([1, 2, 3], [3, 2, 1])
    -1.0
    """
    x, y = _pair(x, y)
    if x.size < 2:
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    # elementwise sums, not np.dot: BLAS threads made a 1-D dot 1000x slower on a busy machine
    covariance = (dx * dy).sum() / x.size
    denominator = (dx * dx).sum() / x.size + (dy * dy).sum() / x.size + (x.mean() - y.mean()) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else 0.0


def sample_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """The authors' CCC (their ``base/logger.py``): covariance / N, variances / (N - 1), 1e-100 added.

    >>> round(sample_ccc([1, 2, 3], [1, 2, 3]), 4)  # 2 (2/3) / (1 + 1)
    0.6667
    """
    x, y = _pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    covariance = (dx * dy).sum() / x.size
    variances = ((dx * dx).sum() + (dy * dy).sum()) / (x.size - 1)
    return float(2 * covariance / (variances + (x.mean() - y.mean()) ** 2 + 1e-100))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation coefficient; 0.0 when either sequence is constant."""
    x, y = _pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / norm) if norm > 0 else 0.0


def rmse(x: np.ndarray, y: np.ndarray) -> float:
    """Root mean squared error."""
    x, y = _pair(x, y)
    return float(np.sqrt(np.mean(np.square(x - y))))


def all_metrics(prediction: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """``{'ccc', 'pcc', 'rmse'}`` of one sequence."""
    return {"ccc": ccc(prediction, label), "pcc": pearson(prediction, label), "rmse": rmse(prediction, label)}


def _label_column(labels: np.ndarray, emotions: Sequence[str], j: int) -> np.ndarray:
    # one column per emotion: they follow ``emotions``; otherwise label.npy's (valence, arousal)
    if labels.shape[1] == len(emotions):
        return labels[:, j]
    if labels.shape[1] == len(EMOTIONS):
        return labels[:, EMOTIONS.index(emotions[j])]
    raise ValueError(f"labels have {labels.shape[1]} columns for emotions {tuple(emotions)}")


def evaluate_partition(
    preds: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], emotions: Sequence[str]
) -> dict:
    """Metrics of a partition, over all its trials concatenated and per trial.

    Args:
        preds: trial -> (n, C) predictions; column j is ``emotions[j]``.
        labels: trial -> (n, C) labels in the order of ``emotions``, or (n, 2) as in label.npy
            (valence, arousal) when fewer emotions are predicted.
        emotions: names of the predicted columns, e.g. ``("valence",)`` or ``("valence", "arousal")``.

    Returns:
        ``{emotion: {'ccc', 'pcc', 'rmse'}, ..., 'per_trial': {trial: {emotion: {'ccc', 'pcc', 'rmse'}}}}``;
        the emotion entries are computed on the concatenation of the trials (in sorted order).
    """
    trials = sorted(preds)
    missing = [t for t in trials if t not in labels]
    if missing:
        raise ValueError(f"no labels for trials {missing[:3]}")
    columns: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {e: ([], []) for e in emotions}
    per_trial: dict[str, dict[str, dict[str, float]]] = {}
    for trial in trials:
        pred = np.asarray(preds[trial], dtype=np.float64).reshape(len(preds[trial]), -1)  # (n, C)
        label = np.asarray(labels[trial], dtype=np.float64).reshape(len(labels[trial]), -1)  # (n, 2|C)
        if len(pred) != len(label):
            raise ValueError(f"trial {trial}: {len(pred)} predictions for {len(label)} labels")
        per_trial[trial] = {}
        for j, emotion in enumerate(emotions):
            truth = _label_column(label, emotions, j)
            per_trial[trial][emotion] = all_metrics(pred[:, j], truth)
            columns[emotion][0].append(pred[:, j])
            columns[emotion][1].append(truth)
    result: dict = {
        emotion: all_metrics(np.concatenate(p or [np.zeros(0)]), np.concatenate(t or [np.zeros(0)]))
        for emotion, (p, t) in columns.items()
    }
    result["per_trial"] = per_trial
    return result


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over windows of 1 - CCC over each window's valid frames (population statistics).

    Args:
        pred: (B, T) predictions.
        target: (B, T) labels.
        mask: (B, T) bool, True on real frames (False on padding); default all True.

    Returns:
        Scalar loss. Windows without any valid frame are left out. ``LOSS_EPS`` is added to the
        denominator, so the gradient stays finite when a window's prediction is constant.
    """
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    weight = mask.to(pred.dtype)  # (B, T)
    n_valid = weight.sum(dim=1)  # (B,)
    has_frames = (n_valid > 0).to(pred.dtype)  # (B,) windows without a valid frame count for nothing
    n = n_valid.clamp(min=1.0)  # no boolean indexing: nothing here makes the host wait for a GPU
    mean_pred = (pred * weight).sum(dim=1) / n  # (B,)
    mean_target = (target * weight).sum(dim=1) / n  # (B,)
    d_pred = (pred - mean_pred[:, None]) * weight  # (B, T), zero on padding
    d_target = (target - mean_target[:, None]) * weight
    covariance = (d_pred * d_target).sum(dim=1) / n
    var_pred = d_pred.square().sum(dim=1) / n
    var_target = d_target.square().sum(dim=1) / n
    concordance = 2 * covariance / (var_pred + var_target + (mean_pred - mean_target).square() + LOSS_EPS)
    return ((1 - concordance) * has_frames).sum() / has_frames.sum().clamp(min=1.0)


def authors_ccc_loss(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The authors' training loss (their ``experiment_regular.py`` CCCLoss), operation for operation.

    Per window over time (dim 1): covariance divided by N (taken elementwise, then averaged with
    everything else), variances unbiased (N - 1), 1e-8 added to the denominator; ``weights`` scale
    each output column; the mean runs over batch, time and outputs. Every frame counts, padding
    included (its labels are 0). With ``mask`` (our extension, not theirs) only the valid frames
    count and N is their number.

    Args:
        outputs: (B, T) or (B, T, C) predictions.
        labels: labels of the same shape.
        mask: optional (B, T) bool, True on the frames that count.
        weights: optional (C,) weight of each output column.
    """
    if mask is None:
        # their forward(gold, pred) is called as criterion(outputs, labels): gold = outputs, pred = labels
        gold_mean, pred_mean = torch.mean(outputs, 1, keepdim=True), torch.mean(labels, 1, keepdim=True)
        covariance = (outputs - gold_mean) * (labels - pred_mean)
        gold_var = torch.var(outputs, 1, keepdim=True, unbiased=True)
        pred_var = torch.var(labels, 1, keepdim=True, unbiased=True)
        concordance = 2.0 * covariance / (
            (gold_var + pred_var + torch.mul(gold_mean - pred_mean, gold_mean - pred_mean)) + LOSS_EPS)
    else:
        valid = mask.to(outputs.dtype).reshape(*mask.shape, *([1] * (outputs.dim() - 2)))  # (B, T[, 1])
        n = valid.sum(dim=1, keepdim=True)  # (B, 1[, 1])
        gold_mean, pred_mean = (outputs * valid).sum(1, keepdim=True) / n, (labels * valid).sum(1, keepdim=True) / n
        d_gold, d_pred = (outputs - gold_mean) * valid, (labels - pred_mean) * valid
        covariance = (d_gold * d_pred).sum(1, keepdim=True) / n
        variances = (d_gold.square().sum(1, keepdim=True) + d_pred.square().sum(1, keepdim=True)) / (n - 1)
        concordance = 2.0 * covariance / (variances + (gold_mean - pred_mean).square() + LOSS_EPS)
    loss = 1.0 - concordance
    if weights is not None:
        loss = loss * weights
    return torch.mean(loss)


FOLD_FUSION_STYLES = ("authors", "clipped")


def ccc_centering(
    predictions: np.ndarray, clip: tuple[float, float] | None = None, style: str = "clipped"
) -> np.ndarray:
    """Fuse K predictions of one sequence by CCC centering (the AVEC gold-standard method).

    With p_k the prediction of fold k and m_k its mean:

        w_k = mean over j != k of CCC(p_k, p_j)               agreement of fold k with the others
        M   = sum_k w_k m_k / sum_k w_k                       agreement-weighted mean
        fused = mean_k (p_k - m_k) + M  = mean_k (p_k - m_k + M)

    i.e. every fold's prediction is shifted by its mean, the agreement-weighted mean is added back
    and the shifted predictions are averaged. ``style``:

    - ``clipped``: population CCC, negative agreements count as 0; when every weight is 0, M falls
      back to the plain mean of the m_k.
    - ``authors``: their ``ConcordanceCorrelationCoefficient`` (``base/logger.py``): ``sample_ccc``
      agreements, negative ones kept, no fallback.

    With K = 2 both weights are equal, so the result is the plain average; K = 1 returns p_0.

    Args:
        predictions: (K, N) predictions of K folds for one trial (one emotion).
        clip: optional (low, high) bounds applied to the result, e.g. (-1, 1).
        style: ``clipped`` or ``authors``.

    Returns:
        (N,) fused prediction, float64.
    """
    if style not in FOLD_FUSION_STYLES:
        raise ValueError(f"fold fusion style must be one of {FOLD_FUSION_STYLES}, got {style!r}")
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim != 2:
        raise ValueError(f"expected (K, N) predictions, got shape {predictions.shape}")
    n_folds = predictions.shape[0]
    if n_folds == 1:
        fused = predictions[0].copy()
    else:
        means = predictions.mean(axis=1)  # (K,)
        pair_ccc = sample_ccc if style == "authors" else ccc
        agreement = np.array([[pair_ccc(predictions[k], predictions[j]) if j != k else np.nan
                               for j in range(n_folds)] for k in range(n_folds)])  # (K, K)
        off_diagonal = ~np.eye(n_folds, dtype=bool)
        weights = agreement[off_diagonal].reshape(n_folds, n_folds - 1).mean(axis=1)  # (K,)
        if style == "authors":
            weighted_mean = float(np.sum(means * weights / weights.sum()))
        elif (weights := np.clip(weights, 0.0, None)).sum() > 0:
            weighted_mean = float(np.dot(weights, means) / weights.sum())
        else:
            weighted_mean = float(means.mean())
        fused = (predictions - means[:, None]).mean(axis=0) + weighted_mean  # (N,)
    if clip is not None:
        fused = np.clip(fused, *clip)
    return fused
