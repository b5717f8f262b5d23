"""Adversarial examples as a cnnviz plugin: a small pixel perturbation that
changes the model's answer (Szegedy et al. 2014; Goodfellow et al. 2015).

Targeted (a class index or label: "make this image an ostrich") or untargeted
(target ``top1``: move the image away from its own top-1 class). The
perturbation lives in pixel space, the image stays in [0, 1], and each item
reports whether the attack survives being saved as 8-bit pixels."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnviz_core import Capability, InputError, Synthesis, SynthesisMethod, SynthesisParams, hookimpl, param, validate_targets
from cnnviz_core.toolkit import frozen_parameters

from cnnviz_plugins.synthesis.support.attacks import Goal, lbfgs_attack, quantize_8bit, sign_attack

ATTACKS = ("fgsm", "pgd", "lbfgs")


@dataclasses.dataclass
class AdversarialParams(SynthesisParams):
    attack: str = param(
        "pgd",
        "fgsm: one step of size epsilon along the gradient's sign (Goodfellow et al. 2015); "
        "pgd: --steps steps of --step-size, projected onto the L-inf ball of radius epsilon and onto [0, 1] "
        "(iterative FGSM; with --random-start, the PGD of Madry et al. 2018); "
        "lbfgs: Szegedy et al. 2014's box-constrained L-BFGS, searching the weight c for the smallest perturbation",
        choices=ATTACKS,
    )
    epsilon: float = param(8 / 255, "fgsm/pgd: L-inf budget in pixel units of [0, 1] (8/255 = 0.0314)", minimum=0.0)
    step_size: float | None = param(None, "pgd: step in pixel units (default 2.5 * epsilon / steps, as Madry et al.)", minimum=0.0)
    steps: int = param(20, "pgd: iterations; lbfgs: L-BFGS-B iterations per value of c; fgsm takes one step", minimum=1)
    random_start: bool = param(False, "pgd: start from a uniform random point of the epsilon ball instead of the image")
    early_stop: bool = param(
        True, "stop each item at its first success (pgd/fgsm); --no-early-stop takes every step and records the step of first success"
    )
    confidence: float = param(
        0.0, "success also needs the objective (the target's probability; untargeted: 1 - the original class's) to reach this; "
        "0: the label change alone", minimum=0.0,
    )
    c: float = param(1.0, "lbfgs: first weight c of the penalty c * ||r||^2 in the search over c", minimum=0.0)
    searches: int = param(6, "lbfgs: L-BFGS-B runs in the search over c (tenfold up or down, then bisection)", minimum=1)
    amplify: float | None = param(
        None, "gain of the perturbation picture (grey + gain * r); default: per item, the gain that takes the largest |r| to black or white",
        minimum=0.0,
    )


class Adversarial(SynthesisMethod):
    """Adversarial examples (FGSM, iterative FGSM / PGD, L-BFGS): a small pixel perturbation that changes the class.

    Targets: a class (index or label) for a targeted attack, or ``top1`` for an
    untargeted one (move away from the image's own top-1 class). Loss: the
    cross-entropy on the logits (untargeted L-BFGS: -log(1 - p(original))).
    History "objective": the target's probability (targeted) or 1 - the
    original class's probability (untargeted) after each step (L-BFGS: after
    each value of c, for the answer so far). With --early-stop (the default)
    an item stops at its first success; the others go on alone."""

    name = "adversarial"
    requires = frozenset({Capability.GRADIENTS})
    Params = AdversarialParams
    needs_image = True
    higher_is_better = True
    batch_hint = 8
    demo_params = {"attack": "pgd", "steps": 10}

    @classmethod
    def demo_target(cls, adapter, inputs):
        # ImageNet's "ostrich", as in Szegedy et al.'s figure and the lecture; other models: untargeted
        return 9 if adapter.num_classes == 1000 else "top1"

    @classmethod
    def check_params(cls, params) -> None:
        if params.attack in ("fgsm", "pgd") and not 0 < params.epsilon <= 1:
            raise InputError(f"adversarial: --epsilon must be in (0, 1] (pixel units; 8/255 = 0.0314), got {params.epsilon}")
        if params.step_size is not None and params.step_size <= 0:
            raise InputError(f"adversarial: --step-size must be positive, got {params.step_size}")
        if params.attack == "lbfgs" and params.c <= 0:
            raise InputError(f"adversarial: --c must be positive, got {params.c}")
        if params.confidence >= 1:
            raise InputError(f"adversarial: --confidence must be below 1, got {params.confidence}")

    def check_targets(self, targets) -> None:
        validate_targets(targets, {"class", "top1"}, self.name, advice="a class is attacked targeted, top1 untargeted")

    def steps_per_item(self) -> int:
        return {"fgsm": 1, "pgd": self.params.steps, "lbfgs": self.params.searches}[self.params.attack]

    def step_length(self) -> float:
        p = self.params
        if p.attack == "fgsm":
            return p.epsilon
        return p.step_size if p.step_size is not None else 2.5 * p.epsilon / p.steps

    def synthesize(self, images: np.ndarray, targets) -> Synthesis:
        import torch

        p = self.params
        module = self.adapter.module
        x0 = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.adapter.device)

        def logits_of(pixels: torch.Tensor) -> torch.Tensor:
            return module(self.to_model(pixels).contiguous(memory_format=torch.channels_last))

        with frozen_parameters(module):
            with torch.no_grad():
                clean = logits_of(x0).float()
            original = clean.argmax(dim=1)
            wanted = torch.tensor([t.class_index if t.kind == "class" else -1 for t in targets], device=x0.device)
            targeted = wanted >= 0
            goal = Goal(torch.where(targeted, wanted, original), targeted, p.confidence)
            if p.attack == "lbfgs":
                adversarial, logits, history, facts = self._lbfgs(logits_of, x0, goal)
            else:
                adversarial, logits, history, facts = self._sign(logits_of, x0, goal)
            with torch.no_grad():
                quantized_logits = logits_of(quantize_8bit(adversarial)).float()
        return self._synthesis(x0, adversarial, clean, logits, quantized_logits, goal, history, facts)

    # -- the attacks ------------------------------------------------------------
    def _sign(self, logits_of, x0, goal):
        p = self.params
        steps = 1 if p.attack == "fgsm" else p.steps
        starts = self.generators(len(x0), str(x0.device)) if p.attack == "pgd" and p.random_start else None

        def report(step, images, objective):
            # images every 10 steps only: copying the batch to keep the best one costs time
            self.step_done(step, images if step % 10 == 9 or step == steps - 1 else None, objective)

        result = sign_attack(logits_of, x0, goal, p.epsilon, self.step_length(), steps, starts, p.early_stop, report)
        facts = [{"steps": int(s), "first_success_step": int(f) if f >= 0 else None} for s, f in zip(result.steps, result.first_success)]
        return result.images, result.logits, result.history, facts

    def _lbfgs(self, logits_of, x0, goal):
        import torch

        p = self.params
        images, logits, history, facts = [], [], [], []
        for i in range(len(x0)):
            answer = lbfgs_attack(logits_of, x0[i], goal.subset(torch.tensor([i], device=x0.device)), p.c, p.searches, p.steps,
                                  on_search=lambda search, i=i: self.step_done(i * p.searches + search))
            images.append(answer["image"])
            logits.append(answer["logits"])
            history.append(answer["history"])
            facts.append({"steps": answer["iterations"], "c": answer["c"]})
        return torch.stack(images), torch.stack(logits).float(), np.stack(history), facts

    # -- the result ------------------------------------------------------------
    def _synthesis(self, x0, adversarial, clean, logits, quantized_logits, goal, history, facts) -> Synthesis:
        import torch

        labels = self.adapter.labels
        label = (lambda c: labels[c] if labels is not None and c < len(labels) else None)
        perturbation = (adversarial - x0).cpu().numpy()
        flat = perturbation.reshape(len(perturbation), -1)
        l2, linf = np.linalg.norm(flat, axis=1), np.abs(flat).max(axis=1)
        gains = np.full(len(flat), self.params.amplify) if self.params.amplify else 0.5 / np.maximum(linf, 1e-12)
        gains = np.where(linf > 0, gains, 1.0)
        probs = {name: torch.softmax(v, dim=1) for name, v in (("before", clean), ("after", logits), ("8bit", quantized_logits))}
        success = goal.reached(logits).cpu().numpy()
        survives = goal.reached(quantized_logits).cpu().numpy()
        objective_before = goal.objective(clean).cpu().numpy()
        objective_after = goal.objective(logits).cpu().numpy()
        records = []
        for i in range(len(x0)):
            top = {name: int(pr[i].argmax()) for name, pr in probs.items()}
            record = {
                "attack": self.params.attack,
                "targeted": bool(goal.targeted[i]),
                "goal_class": int(goal.classes[i]),
                "goal_label": label(int(goal.classes[i])),
                **{f"class_{n}": top[n] for n in probs},
                **{f"label_{n}": label(top[n]) for n in probs},
                **{f"confidence_{n}": float(probs[n][i, top[n]]) for n in probs},
                "objective_before": float(objective_before[i]),
                "objective_after": float(objective_after[i]),
                "success": bool(success[i]),
                "survives_8bit": bool(survives[i]),
                "l2": float(l2[i]),
                "linf": float(linf[i]),
                "amplification": float(gains[i]),
                **facts[i],
            }
            records.append(record)
        picture = np.clip(0.5 + gains[:, None, None, None] * perturbation, 0, 1).astype(np.float32)
        final = probs["after"]
        return Synthesis(
            images=adversarial.cpu().numpy().astype(np.float32),
            history={"objective": np.asarray(history, dtype=np.float32)},
            classes=final.argmax(dim=1).cpu().numpy(),
            scores=final.max(dim=1).values.cpu().numpy().astype(np.float32),
            pictures={"perturbation": picture, "input": x0.cpu().numpy()},
            extras={"perturbation": perturbation.astype(np.float32)},
            records=records,
        )


@hookimpl
def cnnviz_methods():
    return [Adversarial]
