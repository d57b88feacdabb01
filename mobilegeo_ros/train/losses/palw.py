"""PALW: progressive adaptive loss weighting of the hierarchical (self-distillation) term (CSP-HD).

Paper (CSP-HD §3 overview, Fig. 2): PALW "dynamically regulates the influence of HCD", amplifying the
hierarchical-inconsistency penalty in the unstable early phase and gradually reducing it as training stabilises, to
damp short-term fluctuation. The functional form is not available (GAP). Our default (a hypothesis, all config
values):

* schedule ``λ(t) = λ_min + (λ_max − λ_min) · ½(1 + cos(π · min(t/T_total, 1)))``: non-increasing from λ_max to λ_min;
* adaptation to loss fluctuation: an exponential moving average ``m`` of the HCD loss (momentum 0.9, initialised by
  the first value); ``mode="damp"`` multiplies λ by ``clip(m / L_t, lo, hi)`` (a spike above the running level is
  down-weighted, so one noisy batch does not dominate), ``mode="amplify"`` by ``clip(L_t / m, lo, hi)``, ``"none"``
  uses the schedule only. Default clip [0.5, 2].

The weight is a plain float (no gradient flows into it). Not to be confused with DPHR's PALW (arXiv 2510.27181),
which runs the other way on a different loss.
"""

from __future__ import annotations

import math


class PALW:
    """Stateful weight of the hierarchical term: ``w = palw.weight(step, loss_value)`` once per training step."""

    MODES = ("damp", "amplify", "none")

    def __init__(self, lam_max: float = 2.0, lam_min: float = 0.5, total_steps: int = 1000, mode: str = "damp",
                 momentum: float = 0.9, clip: tuple[float, float] = (0.5, 2.0)) -> None:
        if total_steps < 1:
            raise ValueError(f"PALW: total_steps must be >= 1, got {total_steps}")
        if lam_min > lam_max:
            raise ValueError(f"PALW: lam_min {lam_min} > lam_max {lam_max}")
        if mode not in self.MODES:
            raise ValueError(f"PALW: mode must be one of {self.MODES}, got {mode!r}")
        if not 0.0 <= momentum < 1.0 or not 0.0 < clip[0] <= clip[1]:
            raise ValueError(f"PALW: bad momentum {momentum} or clip {clip}")
        self.lam_max, self.lam_min, self.total_steps = float(lam_max), float(lam_min), int(total_steps)
        self.mode, self.momentum, self.clip = mode, float(momentum), (float(clip[0]), float(clip[1]))
        self.ema: float | None = None

    def schedule(self, step: int) -> float:
        """The progressive part ``λ(t)`` alone (cosine from λ_max at t = 0 to λ_min at t ≥ T_total)."""
        t = min(max(step, 0) / self.total_steps, 1.0)
        return self.lam_min + (self.lam_max - self.lam_min) * 0.5 * (1.0 + math.cos(math.pi * t))

    def weight(self, step: int, loss_value: float | None = None) -> float:
        """λ(t) times the adaptive factor; updates the EMA with ``loss_value`` (after computing the factor)."""
        lam = self.schedule(step)
        if self.mode == "none" or loss_value is None or not math.isfinite(loss_value):
            return lam
        value = max(float(loss_value), 1e-12)
        if self.ema is None:
            self.ema = value
        ratio = self.ema / value if self.mode == "damp" else value / self.ema
        factor = min(max(ratio, self.clip[0]), self.clip[1])
        self.ema = self.momentum * self.ema + (1.0 - self.momentum) * value
        return lam * factor

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")


__all__ = ["PALW"]
