"""Adversarial attacks in pixel space ([0, 1]) on a differentiable classifier:
the fast gradient sign method (Goodfellow et al. 2015), its iterative form
projected onto an L∞ ball (Kurakin et al. 2017; with a random start, PGD of
Madry et al. 2018), and Szegedy et al. 2014's box-constrained L-BFGS.

Every function takes ``logits_of(pixels) -> logits`` (pixels (n, 3, H, W) in
[0, 1], a torch tensor that may require grad) and a :class:`Goal` saying, per
item, which class to reach (targeted) or to leave (untargeted). Items are
independent: a batch gives each item what it would get alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # annotations only; torch loads where a function runs on a model
    import torch

LogitsOf = Callable[["torch.Tensor"], "torch.Tensor"]  # annotations only: no torch at import


@dataclasses.dataclass
class Goal:
    """Per item: ``classes`` is the class to reach where ``targeted``, else the
    item's own top-1 class to move away from. Success: the top-1 class is the
    target (targeted) or is no longer the original class (untargeted), and the
    objective has reached ``confidence``."""

    classes: torch.Tensor  # (n,) long
    targeted: torch.Tensor  # (n,) bool
    confidence: float = 0.0

    def subset(self, index: torch.Tensor) -> "Goal":
        return Goal(self.classes[index], self.targeted[index], self.confidence)

    def objective(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's probability (targeted) or 1 − the original class's
        probability (untargeted): higher is better for the attacker."""
        import torch

        probs = torch.softmax(logits.detach().float(), dim=1).gather(1, self.classes[:, None])[:, 0]
        return torch.where(self.targeted, probs, 1 - probs)

    def reached(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        top1 = logits.detach().argmax(dim=1)
        label_ok = torch.where(self.targeted, top1 == self.classes, top1 != self.classes)
        return label_ok & (self.objective(logits) >= self.confidence)

    def ascent_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-item loss the sign attacks descend: the cross-entropy to the
        target (targeted), or minus the cross-entropy to the original class
        (untargeted: Goodfellow et al.'s ascent on the loss of the true label)."""
        import torch
        import torch.nn.functional as F

        cross_entropy = F.cross_entropy(logits.float(), self.classes, reduction="none")
        return torch.where(self.targeted, cross_entropy, -cross_entropy)

    def bounded_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-item loss for L-BFGS, bounded below so that the norm penalty
        keeps a say: the cross-entropy to the target (targeted), or
        −log(1 − p(original)), the cross-entropy to "any other class" (untargeted)."""
        import torch
        import torch.nn.functional as F

        logits = logits.float()
        cross_entropy = F.cross_entropy(logits, self.classes, reduction="none")
        others = logits.scatter(1, self.classes[:, None], float("-inf"))
        not_original = torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)
        return torch.where(self.targeted, cross_entropy, not_original)


@dataclasses.dataclass
class AttackResult:
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    logits: torch.Tensor  # (n, classes) on the final images
    history: np.ndarray  # (n, steps) the objective after each step
    steps: np.ndarray  # (n,) updates applied
    first_success: np.ndarray  # (n,) updates after which the goal was first reached; -1: never


def sign_attack(
    logits_of: LogitsOf,
    start: torch.Tensor,
    goal: Goal,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: list[torch.Generator] | None = None,
    early_stop: bool = True,
    on_step: Callable[[int, torch.Tensor, np.ndarray], None] | None = None,
) -> AttackResult:
    """Iterative FGSM / PGD: ``x ← Π(x − step_size · sign(∇ loss))`` where Π
    clips to the L∞ ball of radius ``epsilon`` around ``start`` and to [0, 1].
    FGSM is one step of size epsilon. ``random_start``: one generator per item
    for a uniform start inside the ball (PGD).

    History column t is the objective after t + 1 updates. With ``early_stop``
    an item leaves the batch once its goal is reached (its curve stays flat);
    without it every item takes all steps and ``first_success`` says when it
    first got there. ``on_step(t, images, objective)`` reports progress."""
    import torch

    count = len(start)
    low, high = (start - epsilon).clamp(0, 1), (start + epsilon).clamp(0, 1)
    x = start.detach().clone()
    if random_start is not None:
        noise = torch.stack([torch.rand(start.shape[1:], generator=g, device=g.device) for g in random_start]).to(start)
        x = torch.min(torch.max(start + (2 * noise - 1) * epsilon, low), high)
    history = np.zeros((count, steps), dtype=np.float32)
    used = np.zeros(count, dtype=np.int64)
    first = np.full(count, -1, dtype=np.int64)
    final_logits: torch.Tensor | None = None
    active = torch.arange(count, device=start.device)
    for t in range(steps + 1):  # t updates done so far
        if len(active) == 0:
            break
        sub = goal.subset(active)
        last = t == steps
        xa = x[active].detach().requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            logits = logits_of(xa)
        if final_logits is None:
            final_logits = torch.empty((count, logits.shape[1]), dtype=torch.float32, device=logits.device)
        final_logits[active] = logits.detach().float()
        objective = sub.objective(logits).cpu().numpy()
        reached = sub.reached(logits).cpu().numpy()
        rows = active.cpu().numpy()
        history[rows, max(t - 1, 0):] = objective[:, None]  # flat from here unless a later step overwrites it
        first[rows[reached & (first[rows] < 0)]] = t
        if on_step is not None and t > 0:
            on_step(t - 1, x, history[:, t - 1])
        if last:
            break
        keep = ~reached if early_stop else np.ones(len(rows), dtype=bool)
        if not keep.any():
            break
        gradient, = torch.autograd.grad(sub.ascent_loss(logits)[torch.from_numpy(keep).to(logits.device)].sum(), xa)
        moving = active[torch.from_numpy(keep).to(active.device)]
        step = xa.detach()[keep] - step_size * gradient[keep].sign()
        x[moving] = torch.min(torch.max(step, low[moving]), high[moving])
        used[rows[keep]] += 1
        active = moving
    return AttackResult(x.detach(), final_logits, history, used, first)


def lbfgs_attack(
    logits_of: LogitsOf,
    image: torch.Tensor,
    goal: Goal,
    c_start: float,
    searches: int,
    iterations: int,
    on_search: Callable[[int], None] | None = None,
) -> dict:
    """Szegedy et al.'s attack on ONE image (3, H, W): minimize
    ``c · ‖r‖₂² + loss(x + r)`` subject to ``x + r ∈ [0, 1]`` with scipy's
    L-BFGS-B (true box constraints), then search c for the smallest
    perturbation that still reaches the goal: c grows tenfold while the goal is
    reached and shrinks tenfold while it is not, then bisects (geometrically)
    between the largest c that succeeded and the smallest that failed.

    The squared norm stands in for the paper's |r| because it is smooth at
    r = 0, where L-BFGS starts. Returns the answer (the smallest successful r,
    else the r with the highest objective), its logits, the c it came from,
    the objective of the answer after each search, and the iterations used."""
    import torch

    from scipy.optimize import fmin_l_bfgs_b

    x0 = image.detach().double().cpu()
    shape = x0.shape
    device = image.device
    flat0 = x0.flatten().numpy()
    bounds = np.stack([-flat0, 1 - flat0], axis=1)

    def perturbed(r: torch.Tensor) -> torch.Tensor:
        # clamped only against float rounding: L-BFGS-B keeps x + r inside the box
        return (x0 + r.reshape(shape)).clamp(0, 1).float().to(device)

    def evaluate(r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits_of(perturbed(r)[None])

    best: dict | None = None
    succeeded, failed = None, None  # the largest c that succeeded, the smallest that failed
    c = float(c_start)
    history = np.zeros(searches, dtype=np.float32)
    iterations_used = 0
    for search in range(searches):
        def loss_and_gradient(flat: np.ndarray, c=c):
            r = torch.from_numpy(flat).to(device=device, dtype=torch.float32).requires_grad_(True)
            logits = logits_of((x0.to(device).float() + r.reshape(shape))[None])
            loss = c * (r.double() ** 2).sum() + goal.bounded_loss(logits).double().sum()
            gradient, = torch.autograd.grad(loss, r)
            return loss.item(), gradient.double().cpu().numpy()

        flat, _, info = fmin_l_bfgs_b(loss_and_gradient, np.zeros_like(flat0), bounds=bounds, maxiter=iterations)
        iterations_used += int(info["nit"])
        r = torch.from_numpy(flat)
        logits = evaluate(r)
        reached = bool(goal.reached(logits)[0])
        objective = float(goal.objective(logits)[0])
        l2 = float(r.norm())
        candidate = {"r": r, "logits": logits[0], "c": c, "reached": reached, "objective": objective, "l2": l2}
        if best is None or _better(candidate, best):
            best = candidate
        history[search] = best["objective"]
        if reached:
            succeeded = c if succeeded is None else max(succeeded, c)
        else:
            failed = c if failed is None else min(failed, c)
        if failed is None:
            c *= 10
        elif succeeded is None:
            c /= 10
        else:
            c = float(np.sqrt(succeeded * failed))
        if on_search is not None:
            on_search(search)
    image_out = perturbed(best["r"])
    return {"image": image_out, "logits": best["logits"], "c": best["c"], "reached": best["reached"],
            "history": history, "iterations": iterations_used}


def _better(candidate: dict, best: dict) -> bool:
    """A success beats a failure; among successes the smaller perturbation,
    among failures the higher objective."""
    if candidate["reached"] != best["reached"]:
        return candidate["reached"]
    if candidate["reached"]:
        return candidate["l2"] < best["l2"]
    return candidate["objective"] > best["objective"]


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit PNG does to pixels in [0, 1]."""
    import torch

    return torch.round(images.clamp(0, 1) * 255) / 255
