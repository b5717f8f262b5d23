"""The per-item L-BFGS of style transfer on problems with known minima: it
converges, each item follows the path it would follow alone, and the box
projection holds."""

from __future__ import annotations

import torch

from cnnviz_plugins.synthesis.support.batched_lbfgs import BatchedLBFGS


def quadratics(count: int, n: int = 12, seed: int = 0):
    """f_i(x) = ½ xᵀ A_i x − c_iᵀ x with condition numbers 10, 100, 1000 …"""
    generator = torch.Generator().manual_seed(seed)
    rotations = torch.linalg.qr(torch.randn(count, n, n, generator=generator, dtype=torch.float64))[0]
    spectra = torch.stack([torch.logspace(0, k + 1, n, dtype=torch.float64) for k in range(count)])
    matrices = rotations @ torch.diag_embed(spectra) @ rotations.transpose(1, 2)
    linear = torch.randn(count, n, generator=generator, dtype=torch.float64)

    def objective(x):
        values = 0.5 * torch.einsum("bi,bij,bj->b", x, matrices[: len(x)], x) - (linear[: len(x)] * x).sum(1)
        return values, {"value": values}

    return objective, torch.linalg.solve(matrices, linear), matrices, linear


def test_converges_on_quadratics_of_growing_condition():
    objective, minima, _, _ = quadratics(3)
    solver = BatchedLBFGS(torch.zeros_like(minima), objective)
    start = solver.f.clone()
    for _ in range(150):  # unit steps, no exact line search: the 1000-conditioned one takes ~110
        values = solver.step()
    assert torch.allclose(solver.point, minima, atol=1e-6)
    assert (values < start).all()
    assert torch.equal(solver.details["value"], solver.f)  # the details belong to the current point


def test_each_item_follows_its_own_path():
    objective, minima, matrices, linear = quadratics(3)
    together = BatchedLBFGS(torch.zeros_like(minima), objective)
    for _ in range(15):
        together.step()
    for i in range(3):
        def alone(x, i=i):
            values = 0.5 * torch.einsum("bi,bij,bj->b", x, matrices[i : i + 1], x) - (linear[i : i + 1] * x).sum(1)
            return values, {}

        single = BatchedLBFGS(torch.zeros(1, minima.shape[1], dtype=torch.float64), alone)
        for _ in range(15):
            single.step()
        assert torch.allclose(single.point[0], together.point[i], atol=1e-12, rtol=0)


def test_rosenbrock_needs_the_line_search():
    def rosenbrock(x):
        values = (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
        return values, {}

    solver = BatchedLBFGS(torch.tensor([[-1.5, 2.0], [0.0, 0.0]], dtype=torch.float64), rosenbrock)
    previous = solver.f.clone()
    for _ in range(100):
        values = solver.step()
        assert (values <= previous + 1e-12).all()  # Armijo: never uphill
        previous = values.clone()
    assert torch.allclose(solver.point, torch.ones(2, 2, dtype=torch.float64), atol=1e-5)


def test_projection_keeps_the_box_and_finds_the_constrained_minimum():
    # minimum of ‖x − t‖² over the box [0, 1]: t clipped to the box
    target = torch.tensor([[1.7, -0.4, 0.3], [0.5, 2.0, -3.0]], dtype=torch.float64)

    def distance(x):
        values = ((x - target) ** 2).sum(1)
        return values, {}

    solver = BatchedLBFGS(torch.full_like(target, 0.5), distance, project=lambda x: x.clamp(0.0, 1.0))
    for _ in range(30):
        solver.step()
        assert solver.point.min() >= 0.0 and solver.point.max() <= 1.0
    assert torch.allclose(solver.point, target.clamp(0.0, 1.0), atol=1e-6)
