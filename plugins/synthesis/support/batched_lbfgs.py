"""L-BFGS for a batch of independent problems, one batched evaluation per try.

Gatys et al. optimize style transfer with L-BFGS. torch.optim.LBFGS treats
all of a batch's pixels as one vector, so one item's curvature and line
search would steer the others and a result would depend on its batch. Here
each item keeps its own curvature pairs, step length and line search; the
objective is evaluated for all items at once (one forward and backward), and
an item's path is the one it would take alone.

Each iteration: the two-loop recursion gives the direction (steepest descent,
scaled down, while an item has no curvature pairs yet), a backtracking line
search halves an item's step until its objective drops enough (Armijo), the
new point is projected into the feasible box, and the pair (s, y) is kept
when its curvature s·y is positive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

ARMIJO = 1e-4  # sufficient decrease: f(x + s) ≤ f(x) + c·∇f(x)·s
MAX_HALVINGS = 12


class BatchedLBFGS:
    """``objective(x)`` returns ``(values, details)``: one value per item, (b,),
    differentiable in ``x`` (b, ...), and a dict of further (b,) tensors to
    keep for the accepted points (the terms of a loss); ``project`` maps a
    point back into the feasible set. ``details`` holds them for ``point``."""

    def __init__(
        self,
        x: torch.Tensor,
        objective: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        lr: float = 1.0,
        memory: int = 10,
        project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        import torch

        self.objective = objective
        self.lr = lr
        self.memory = memory
        self.project = project or (lambda value: value)
        self.shape = x.shape
        self.b = x.shape[0]
        self.x = self.project(x.detach()).reshape(self.b, -1).clone()
        n = self.x.shape[1]
        like = dict(dtype=self.x.dtype, device=self.x.device)
        self.s = torch.zeros(memory, self.b, n, **like)
        self.y = torch.zeros(memory, self.b, n, **like)
        self.rho = torch.zeros(memory, self.b, **like)
        self.count = torch.zeros(self.b, dtype=torch.long, device=self.x.device)  # pairs held per item
        self.head = torch.zeros(self.b, dtype=torch.long, device=self.x.device)  # next slot written per item
        self.gamma = torch.ones(self.b, **like)  # initial Hessian scale s·y / y·y of the newest pair
        self.f, self.g, self.details = self._evaluate(self.x)

    @property
    def point(self) -> torch.Tensor:
        return self.x.reshape(self.shape)

    def _evaluate(self, flat: torch.Tensor):
        import torch

        x = flat.reshape(self.shape).detach().requires_grad_(True)
        with torch.enable_grad():
            values, details = self.objective(x)
            (gradient,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), gradient.reshape(self.b, -1), {key: value.detach() for key, value in details.items()}

    def _direction(self) -> torch.Tensor:
        import torch

        items = torch.arange(self.b, device=self.x.device)
        q = self.g.clone()
        alphas = []
        for k in range(self.memory):  # newest pair first
            slot = (self.head - 1 - k) % self.memory
            held = (k < self.count).to(q.dtype)
            s, y, rho = self.s[slot, items], self.y[slot, items], self.rho[slot, items] * held
            alpha = rho * (s * q).sum(dim=1)
            q -= alpha[:, None] * y
            alphas.append((alpha, s, y, rho))
        r = self.gamma[:, None] * q
        for alpha, s, y, rho in reversed(alphas):  # oldest pair first
            beta = rho * (y * r).sum(dim=1)
            r += (alpha - beta)[:, None] * s
        direction = -r
        fresh = self.count == 0
        if fresh.any():
            # No curvature known yet: a steepest-descent step of length lr·min(1, 1/‖g‖₁) (torch's LBFGS start).
            scale = torch.clamp(1.0 / self.g.abs().sum(dim=1).clamp_min(1e-30), max=1.0)
            direction[fresh] = -self.g[fresh] * scale[fresh, None]
        return direction

    def step(self) -> torch.Tensor:
        """One iteration for every item; returns the objective at the new points."""
        import torch

        direction = self._direction()
        slope = (self.g * direction).sum(dim=1)
        uphill = slope >= 0  # curvature pairs gone stale: restart from steepest descent
        if uphill.any():
            self.count[uphill] = 0
            scale = torch.clamp(1.0 / self.g.abs().sum(dim=1).clamp_min(1e-30), max=1.0)
            direction[uphill] = -self.g[uphill] * scale[uphill, None]
        length = torch.full((self.b,), float(self.lr), dtype=self.x.dtype, device=self.x.device)
        accepted = torch.zeros(self.b, dtype=torch.bool, device=self.x.device)
        new_x, new_f, new_g = self.x.clone(), self.f.clone(), self.g.clone()
        new_details = dict(self.details)
        for _ in range(MAX_HALVINGS + 1):
            trial = torch.where(accepted[:, None], new_x, self.project((self.x + length[:, None] * direction).reshape(self.shape)).reshape(self.b, -1))
            f, g, details = self._evaluate(trial)
            decrease = f <= self.f + ARMIJO * (self.g * (trial - self.x)).sum(dim=1)
            take = decrease & ~accepted
            new_x[take], new_f[take], new_g[take] = trial[take], f[take], g[take]
            new_details = {key: torch.where(take, details[key], value) for key, value in new_details.items()}
            accepted |= take
            if bool(accepted.all()):
                break
            length = torch.where(accepted, length, length / 2)
        # An item that found no decrease stays put and forgets its curvature.
        self.count[~accepted] = 0
        s, y = new_x - self.x, new_g - self.g
        curvature = (s * y).sum(dim=1)
        keep = accepted & (curvature > 1e-10 * (s * s).sum(dim=1).clamp_min(1e-30))
        if keep.any():
            items = torch.nonzero(keep).squeeze(1)
            slots = self.head[items]
            self.s[slots, items], self.y[slots, items] = s[items], y[items]
            self.rho[slots, items] = 1.0 / curvature[items]
            self.gamma[items] = curvature[items] / (y[items] * y[items]).sum(dim=1)
            self.head[items] = (slots + 1) % self.memory
            self.count[items] = torch.clamp(self.count[items] + 1, max=self.memory)
        self.x, self.f, self.g, self.details = new_x, new_f, new_g, new_details
        return self.f

