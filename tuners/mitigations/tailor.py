"""Model Tailor (Zhu et al., ICML 2024): keep a sparse patch of a fine-tune, revert the rest, compensate.

As the authors' code does it (a SparseGPT variant), per Linear layer and decoder layer after decoder layer, the
inputs of each layer computed by the layers already tailored:

    H = 2/n sum X^T X over the target task's calibration tokens (+ damping * mean diag), U = chol(H^-1, upper)
    per block of `block_size` columns:
        salience    = |W_ft - W_pre|                                  (the fine-tuned weight, before compensation)
        sensitivity = (W - W_pre)^2 / diag(U)^2   (paper)   or   W^2 / diag(U)^2   (official code)
        importance  = fusion * z(salience) + (1 - fusion) * z(sensitivity), z-scored per row over the block
        keep the top `keep` share (of the block, or of each row's part of it) at fine-tuned values, revert the rest
        column by column: err = (w - q) / U_ii, later columns W[:, j] -= err * U_ij (subtract, as OBS/SparseGPT;
        the official code adds), so the kept entries carry what the reverted ones changed

A Linear's bias is one more column of W whose input is always 1, so it is kept or reverted like any weight, and
keep = 1 gives exactly the fine-tuned layer and keep = 0 exactly the pre-trained one.
"""
from __future__ import annotations

from typing import Iterator

import torch

from tuners.mitigations.settings import TailorSettings


# --- one Linear layer ----------------------------------------------------------------------------------------------


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """Per row; a row with no spread scores 0 everywhere instead of NaN. A block of one column (a bias past the last
    full block) has no row spread, so it is scored over its rows instead."""
    if x.shape[1] < 2:
        return _zscore(x.T).T
    std = x.std(dim=1, keepdim=True)
    return torch.where(std > 0, (x - x.mean(dim=1, keepdim=True)) / std.clamp_min(1e-30), torch.zeros_like(x))


def select(importance: torch.Tensor, keep: float, selection: str) -> torch.Tensor:
    """The kept entries of one block: exactly round(keep * n) of the highest importance (ties by position), n the
    block's entries or each row's."""
    flat = importance if selection == "row" else importance.reshape(1, -1)
    k = round(keep * flat.shape[1])
    kept = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
        kept.scatter_(1, order, True)
    return kept.reshape(importance.shape)


def inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """U = the upper Cholesky factor of the damped H^-1 (SparseGPT's `Hinv`); an input never seen gets H_ii = 1."""
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damping * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype, device=h.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()


def tailor_weight(w_pre: torch.Tensor, w_ft: torch.Tensor, hessian: torch.Tensor,
                  s: TailorSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(tailored weight, kept mask) of one (out, in) weight from its calibration Hessian (in, in)."""
    pre, ft = w_pre.float(), w_ft.float()
    w = ft.clone()
    u = inverse_hessian_factor(hessian.to(w.device), s.damping)
    salience = (ft - pre).abs()
    kept = torch.zeros_like(w, dtype=torch.bool)
    sign = {"subtract": 1.0, "add": -1.0, "none": 0.0}[s.compensation]
    columns = w.shape[1]
    for i1 in range(0, columns, s.block_size):
        i2 = min(i1 + s.block_size, columns)
        w1, p1, u1 = w[:, i1:i2].clone(), pre[:, i1:i2], u[i1:i2, i1:i2]
        d = torch.diag(u1)
        numerator = (w1 - p1) ** 2 if s.sensitivity == "delta" else w1 ** 2
        importance = s.fusion * _zscore(salience[:, i1:i2]) + (1 - s.fusion) * _zscore(numerator / d[None, :] ** 2)
        kept1 = select(importance, s.keep, s.selection)
        q1 = torch.empty_like(w1)
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            q = torch.where(kept1[:, i], w1[:, i], p1[:, i])
            q1[:, i] = q
            err1[:, i] = (w1[:, i] - q) / d[i]
            if sign:
                w1[:, i:] -= sign * err1[:, i, None] * u1[i, i:][None, :]
        w[:, i1:i2] = q1
        kept[:, i1:i2] = kept1
        if sign and i2 < columns:
            w[:, i2:] -= sign * err1 @ u[i1:i2, i2:]
    return w.to(w_ft.dtype), kept


def with_bias(linear: torch.nn.Linear) -> torch.Tensor:
    """[W | b]: the bias as the column whose input is always 1 (W itself when there is no bias)."""
    w = linear.weight.data
    return w if linear.bias is None else torch.cat([w, linear.bias.data[:, None]], dim=1)


def tailor_linear(pre: torch.nn.Linear, ft: torch.nn.Linear, hessian: torch.Tensor, s: TailorSettings) -> int:
    """Tailor `ft` in place (weight, and bias as an input column of ones); `hessian` includes that column when there
    is a bias. Returns how many entries were kept."""
    w, kept = tailor_weight(with_bias(pre), with_bias(ft), hessian, s)
    if ft.bias is not None:
        ft.bias.data.copy_(w[:, -1])
        w = w[:, :-1]
    ft.weight.data.copy_(w)
    return int(kept.sum())


class HessianHook:
    """H = 2/n sum x x^T over a Linear's input rows (the tokens `mask` keeps), accumulated as batches pass."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        width = linear.in_features + (linear.bias is not None)
        self.h = torch.zeros(width, width, dtype=torch.float64, device=linear.weight.device)
        self.n = 0
        self.bias = linear.bias is not None
        self.mask: torch.Tensor | None = None  # (batch, tokens) of the batch being run; None = every token
        self.handle = linear.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0]
        x = x[self.mask.bool()] if self.mask is not None and x.dim() == 3 else x.reshape(-1, x.shape[-1])
        x = x.double()
        if self.bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        if not len(x):
            return
        self.h *= self.n / (self.n + len(x))
        self.n += len(x)
        x = (2 / self.n) ** 0.5 * x
        self.h += x.T @ x

    def remove(self) -> torch.Tensor:
        self.handle.remove()
        return self.h


def linears(module: torch.nn.Module, names: set[str] | None) -> Iterator[tuple[str, torch.nn.Linear]]:
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) and (names is None or name.split(".")[-1] in names):
            yield name, child
