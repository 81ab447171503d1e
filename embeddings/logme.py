"""LogME (You et al., ICML 2021): how well a feature matrix explains a target's labels, without training.

The evidence is the log marginal likelihood of a Bayesian linear model y = F w + noise,
w ~ N(0, alpha^-1 I), noise ~ N(0, beta^-1), maximised over alpha and beta by MacKay's fixed-point
updates, per target column (one-hot per class, or per regression output), averaged over the columns
and divided by n, as in the paper's reference algorithm.

Everything runs in the eigenbasis of the smaller Gram matrix (F^T F when d <= n, F F^T when n < d),
computed once per feature matrix; the updates then cost O(rank) per column and run for every
column (and every source of `logme_many`) at once. Each column stops on its own convergence, so a
column's score does not depend on what it was batched with.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_ITERATIONS = 100
"""Upper bound on fixed-point updates; the paper's reference stops after 11, most columns need fewer than 20."""
TOLERANCE = 1e-3
"""A column has converged when alpha / beta changes by less than this, relatively."""
_BOUND = 1e100  # alpha and beta stay in [1 / _BOUND, _BOUND]: finite logs even for degenerate columns
_RESIDUAL_FLOOR = 1e-12  # a residual is at least this fraction of ||y||^2: labels exactly in span stay finite


def logme(features: np.ndarray, labels: np.ndarray, *, regression: bool = False) -> float:
    """LogME of one (n, d) feature matrix: higher means the features explain the labels better."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {features.shape}")
    return float(logme_many(features[None], labels, regression=regression)[0])


def logme_many(features: np.ndarray, labels: np.ndarray, *, regression: bool = False) -> np.ndarray:
    """LogME of s feature matrices (s, n, d) of the same rows against the same labels: one score per source.

    One batched eigendecomposition and one batched fixed-point loop for all sources and label columns.
    """
    stack = np.ascontiguousarray(features, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"features must be (sources, n, d), got shape {stack.shape}")
    targets = label_matrix(labels, regression=regression)
    sources, n, d = stack.shape
    _check_sizes(n, d, targets)
    if sources == 0:
        return np.zeros(0)
    if not np.isfinite(stack).all():
        raise ValueError("features contain NaN or infinity")
    tensor = torch.from_numpy(stack)  # torch's matmul: MKL, and the same threads as the eigendecomposition
    if d <= n:
        gram = (tensor.mT @ tensor).numpy()
        cross = (tensor.mT @ torch.from_numpy(targets)).numpy()
        return logme_from_gram(gram, cross, targets, n)
    # n < d: the n x n Gram matrix F F^T is the smaller one; its eigenvectors span all of R^n, so a zero
    # eigenvalue's coordinate of y is simply part of the residual.
    eigenvalues, vectors = _eigh((tensor @ tensor.mT).numpy())
    kept = _kept(eigenvalues, n, d)
    projections = vectors.transpose(0, 2, 1) @ targets  # (s, n, k)
    perpendicular = np.zeros((sources, targets.shape[1]))
    return _scores(np.where(kept, eigenvalues, 0.0), projections, perpendicular, targets, n)


def logme_from_gram(gram: np.ndarray, cross: np.ndarray, targets: np.ndarray, n: int) -> np.ndarray:
    """LogME of s feature matrices known only through F^T F (s, d, d) and F^T y (s, d, k), with d <= n.

    For callers that can form these without the (s, n, d) features, as ESM-mapped targets do.
    """
    gram, cross = np.asarray(gram, dtype=np.float64), np.asarray(cross, dtype=np.float64)
    sources, d, _ = gram.shape
    _check_sizes(n, d, targets)
    if d > n:
        raise ValueError("logme_from_gram needs d <= n; pass the features to logme_many instead")
    if not (np.isfinite(gram).all() and np.isfinite(cross).all()):
        raise ValueError("features contain NaN or infinity")
    eigenvalues, vectors = _eigh(gram)
    kept = _kept(eigenvalues, n, d)
    along = vectors.transpose(0, 2, 1) @ cross  # sigma_i * (u_i^T y) for the left singular vectors u_i
    root = np.sqrt(np.where(kept, eigenvalues, 1.0))
    projections = np.where(kept[..., None], along / root[..., None], 0.0)
    norms = (targets * targets).sum(axis=0)
    perpendicular = np.maximum(norms[None] - (projections * projections).sum(axis=1), 0.0)
    return _scores(np.where(kept, eigenvalues, 0.0), projections, perpendicular, targets, n)


def label_matrix(labels: np.ndarray, *, regression: bool = False) -> np.ndarray:
    """Targets as an (n, k) float64 matrix: one-hot over the classes present, or the regression outputs."""
    labels = np.asarray(labels)
    if labels.ndim == 0 or labels.ndim > 2 or (not regression and labels.ndim != 1):
        raise ValueError(f"labels must be (n,) class ids or (n,) / (n, k) regression targets, got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("LogME needs labels")
    if regression:
        targets = labels.astype(np.float64).reshape(len(labels), -1)
        if not np.isfinite(targets).all():
            raise ValueError("regression targets contain NaN or infinity")
        return targets
    if labels.dtype.kind not in "iub":
        raise ValueError(f"class labels must be integer ids, got dtype {labels.dtype}; pass regression=True "
                         "for real-valued targets")
    _, codes = np.unique(labels, return_inverse=True)
    return np.eye(int(codes.max()) + 1)[codes.reshape(-1)]


def _check_sizes(n: int, d: int, targets: np.ndarray) -> None:
    if targets.shape[0] != n:
        raise ValueError(f"{n} feature rows but {targets.shape[0]} labels")
    if n < 2 or d < 1:
        raise ValueError("LogME needs at least 2 rows and 1 feature")


def _eigh(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched symmetric eigendecomposition in float64 through torch (LAPACK of MKL; about 1.6x numpy's on CPU).

    Runs on the process's torch thread count (`set_threads`); on a machine shared with other jobs one
    thread is fastest.
    """
    values, vectors = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(matrices)))
    return values.numpy(), vectors.numpy()


def _kept(eigenvalues: np.ndarray, n: int, d: int) -> np.ndarray:
    """Eigenvalues that are signal, above the Gram matrix's rounding error; the rest are set to exact zeros,
    so constant and duplicate columns add nothing instead of noise."""
    top = eigenvalues.max(axis=-1, keepdims=True)
    return eigenvalues > np.maximum(top * max(n, d) * np.finfo(np.float64).eps * 10, 1e-300)


def _scores(eigenvalues: np.ndarray, projections: np.ndarray, perpendicular: np.ndarray, targets: np.ndarray,
            n: int) -> np.ndarray:
    """Per source: eigenvalues (s, r), the labels' coordinates on the left singular vectors (s, r, k) and the
    part of ||y||^2 outside them (s, k) -> the evidence averaged over label columns, divided by n."""
    floor = _RESIDUAL_FLOOR * (targets * targets).sum(axis=0)[None] + 1e-300
    evidence = _maximise_evidence(eigenvalues, projections, np.maximum(perpendicular, floor), n)  # (s, k)
    return evidence.mean(axis=1) / n


def _maximise_evidence(eigenvalues: np.ndarray, projections: np.ndarray, perpendicular: np.ndarray,
                       n: int) -> np.ndarray:
    """MacKay's fixed point for every (source, column): the maximised log evidence, (s, k)."""
    lam = eigenvalues[..., None]  # (s, r, 1)
    squares = projections * projections  # (s, r, k)
    shape = perpendicular.shape
    # Start where the reference does (alpha = beta = 1) after scaling F to unit top eigenvalue; the
    # maximised evidence does not depend on that scale, only the path to it does.
    scale = np.maximum(eigenvalues.max(axis=1), 1e-300)[:, None]  # (s, 1)
    alpha = np.broadcast_to(np.clip(scale, 1 / _BOUND, _BOUND), shape).copy()
    beta = np.ones(shape)
    active = np.ones(shape, dtype=bool)
    for _ in range(MAX_ITERATIONS):
        gamma, weight_norm, residual = _terms(alpha, beta, lam, squares, perpendicular)
        new_alpha = np.clip(gamma / np.maximum(weight_norm, 1e-300), 1 / _BOUND, _BOUND)
        new_beta = np.clip((n - gamma) / residual, 1 / _BOUND, _BOUND)
        ratio, new_ratio = alpha / beta, new_alpha / new_beta
        alpha = np.where(active, new_alpha, alpha)
        beta = np.where(active, new_beta, beta)
        active &= np.abs(new_ratio - ratio) > TOLERANCE * ratio
        if not active.any():
            break
    return _log_evidence(alpha, beta, lam, squares, perpendicular, n)


def _terms(alpha: np.ndarray, beta: np.ndarray, lam: np.ndarray, squares: np.ndarray,
           perpendicular: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gamma, m^T m and ||y - F m||^2 at (alpha, beta), with m = beta A^-1 F^T y, each (s, k).

    Written with shrinkage factors in [0, 1] so nothing overflows at the bounds of alpha and beta.
    """
    denominator = alpha[:, None] + beta[:, None] * lam  # (s, r, k)
    shrink = beta[:, None] * lam / denominator  # beta lambda_i / (alpha + beta lambda_i)
    gamma = shrink.sum(axis=1)
    weight_norm = (squares * shrink * (beta[:, None] / denominator)).sum(axis=1)
    residual = perpendicular + (squares * (alpha[:, None] / denominator) ** 2).sum(axis=1)
    return gamma, weight_norm, residual


def _log_evidence(alpha: np.ndarray, beta: np.ndarray, lam: np.ndarray, squares: np.ndarray,
                  perpendicular: np.ndarray, n: int) -> np.ndarray:
    """log p(y | F, alpha, beta) in the eigenbasis.

    d/2 log alpha - 1/2 log det(alpha I + beta F^T F) is written as -1/2 sum log1p(beta lambda_i / alpha)
    over the nonzero eigenvalues, so zero directions (constant or duplicate features) cancel exactly.
    """
    _, weight_norm, residual = _terms(alpha, beta, lam, squares, perpendicular)
    log_det_ratio = np.log1p(beta[:, None] * lam / alpha[:, None]).sum(axis=1)
    return (n / 2 * np.log(beta) - 0.5 * log_det_ratio - beta / 2 * residual - alpha / 2 * weight_norm
            - n / 2 * math.log(2 * math.pi))
