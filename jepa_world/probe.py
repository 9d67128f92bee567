"""Frozen-feature diagnostics: does an encoder's latent carry what planning needs?

`ridge_probe_r2` fits a closed-form ridge regression from frozen features to a generating
factor (e.g. the robot's end-effector position) and reports held-out R^2; `effective_rank`
detects collapse. Both are cheap enough to run after every pretraining stage.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

RIDGE_LAMBDAS: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def effective_rank(features: Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred (N, D) features (Roy & Vetterli)."""
    centred = features.double() - features.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum()
    return math.exp(-(p * p.clamp_min(1e-12).log()).sum().item())


def ridge_probe_r2(features: Tensor, targets: Tensor, n_train: int, n_val: int) -> float:
    """Ridge on standardised features, lambda picked on a validation split; returns test R^2.

    Rows are split in order: [0, n_train) train, [n_train, n_train + n_val) validation, rest test,
    so callers control leakage (e.g. split by episode before concatenating).
    """
    x = features.flatten(1).double()
    y = targets.flatten(1).double()
    if n_train <= 0 or n_val <= 0 or n_train + n_val >= len(x):
        raise ValueError(f"n_train={n_train}, n_val={n_val} leave no test rows out of {len(x)}")
    train, val, test = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, len(x))
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    y_mean = y[train].mean(0)
    gram = x[train] @ x[train].T  # dual form: features may outnumber samples

    def r2(pred: Tensor, split: slice) -> float:
        return 1.0 - ((y[split] - pred) ** 2).sum().item() / ((y[split] - y_mean) ** 2).sum().item()

    best_val, best_test = -math.inf, -math.inf
    for lam in RIDGE_LAMBDAS:
        alpha = torch.linalg.solve(gram + lam * torch.eye(n_train, dtype=x.dtype), y[train] - y_mean)
        weights = x[train].T @ alpha
        val_r2 = r2(x[val] @ weights + y_mean, val)
        if val_r2 > best_val:
            best_val, best_test = val_r2, r2(x[test] @ weights + y_mean, test)
    return best_test
