"""The scaling laws of Gao et al. (2024), fitted to a sweep's losses.

- At fixed k, L(n) = exp(alpha + beta log n) + exp(zeta): a power law in the number of latents
  with an irreducible term (the paper's Figure 1 form).
- Jointly, L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n)
  + exp(zeta + eta log k) (the paper's equation for the n-k frontier).

Both are fitted by least squares on log L (losses span orders of magnitude), with L-BFGS from
several starts; the fit error is the RMS residual in log L and each parameter's standard error
from the Gauss-Newton covariance sigma^2 (J^T J)^-1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor, Tensor], Tensor]  # (params, log n, log k) -> L


@dataclass(frozen=True)
class Fit:
    """Fitted parameters by name, their standard errors, and the RMS residual in log L."""

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    rms_log_error: float
    n_points: int

    def to_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "params": self.params,
            "stderr": self.stderr,
            "rms_log_error": self.rms_log_error,
            "n_points": self.n_points,
        }


def _power_law(p: Tensor, log_n: Tensor, log_k: Tensor) -> Tensor:
    return torch.exp(p[0] + p[1] * log_n) + torch.exp(p[2])


def _joint(p: Tensor, log_n: Tensor, log_k: Tensor) -> Tensor:
    reducible = p[0] + p[1] * log_k + p[2] * log_n + p[3] * log_k * log_n
    return torch.exp(reducible) + torch.exp(p[4] + p[5] * log_k)


POWER_LAW = ("alpha", "beta", "zeta")
JOINT = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> Fit:
    """L(n) = exp(alpha + beta log n) + exp(zeta) at one k; needs at least 3 points."""
    if len(n) < 3:
        raise ValueError(f"a power law with an irreducible term needs 3 or more n, got {len(n)}")
    floor = math.log(min(loss)) - 1.0
    starts = [[math.log(max(loss)), -0.5, floor], [math.log(max(loss)) + 2, -1.0, floor - 2]]
    return _fit(
        "L(n) = exp(alpha + beta log n) + exp(zeta)",
        _power_law,
        POWER_LAW,
        n,
        [1.0] * len(n),
        loss,
        starts,
    )


def fit_joint(n: Sequence[float], k: Sequence[float], loss: Sequence[float]) -> Fit:
    """The paper's joint L(n, k); needs at least 7 points for 6 parameters and an error."""
    if len(n) < 7:
        raise ValueError(f"the joint n-k law has 6 parameters: give 7 or more runs, got {len(n)}")
    top = math.log(max(loss))
    floor = math.log(min(loss)) - 1.0
    starts = [[top, 0.0, -0.5, 0.0, floor, 0.0], [top + 2, -0.5, -1.0, 0.0, floor - 2, -0.2]]
    return _fit(
        "L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) "
        "+ exp(zeta + eta log k)",
        _joint,
        JOINT,
        n,
        k,
        loss,
        starts,
    )


def _fit(
    form: str,
    model: Model,
    names: Sequence[str],
    n: Sequence[float],
    k: Sequence[float],
    loss: Sequence[float],
    starts: list[list[float]],
) -> Fit:
    if any(v <= 0 for v in [*n, *k, *loss]):
        raise ValueError("n, k and losses must all be positive")
    log_n = torch.tensor(n, dtype=torch.float64).log()
    log_k = torch.tensor(k, dtype=torch.float64).log()
    target = torch.tensor(loss, dtype=torch.float64).log()

    def residuals(p: Tensor) -> Tensor:
        return model(p, log_n, log_k).log() - target

    best = min((_minimise(residuals, start) for start in starts), key=lambda p: _sse(residuals, p))
    r = residuals(best).detach()
    dof = max(1, len(r) - len(names))
    sigma2 = float(r.pow(2).sum()) / dof
    jacobian = torch.autograd.functional.jacobian(residuals, best)  # (points, params)
    covariance = torch.linalg.pinv(jacobian.T @ jacobian) * sigma2
    stderr = covariance.diagonal().clamp(min=0).sqrt()
    return Fit(
        form=form,
        params={name: float(v) for name, v in zip(names, best, strict=True)},
        stderr={name: float(v) for name, v in zip(names, stderr, strict=True)},
        rms_log_error=float(r.pow(2).mean().sqrt()),
        n_points=len(r),
    )


def _sse(residuals: Callable[[Tensor], Tensor], p: Tensor) -> float:
    value = float(residuals(p).pow(2).sum())
    return value if math.isfinite(value) else math.inf


def _minimise(residuals: Callable[[Tensor], Tensor], start: list[float]) -> Tensor:
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [p],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        value = residuals(p).pow(2).sum()
        value.backward()
        return value

    for _ in range(5):
        optimiser.step(closure)
    return p.detach()
