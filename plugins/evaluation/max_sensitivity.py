"""Max-sensitivity (Yeh et al. 2019): the largest relative change of a map,
``max_δ ‖Φ(x + δ) − Φ(x)‖ / ‖Φ(x)‖``, over seeded uniform noise δ in an L∞
ball; lower is better. Definition choices are in
:mod:`cnnviz_plugins.evaluation.support.sensitivity` (radius in pixel units,
the same noise for every method, relative norm, NaN for an all-zero map).
Re-runs the method ``samples`` times per image."""

from __future__ import annotations

import numpy as np

from cnnviz_core import hookimpl

from cnnviz_plugins.evaluation.support.sensitivity import SensitivityMetric


class MaxSensitivity(SensitivityMetric):
    """Max-sensitivity (Yeh et al. 2019): largest relative map change under small seeded input noise; lower is better."""

    name = "max_sensitivity"
    reduce = staticmethod(np.max)


@hookimpl
def cnnviz_methods():
    return [MaxSensitivity]
