"""Helpers shared by the synthesis methods (image parameterizations, priors, objectives, optimizers)."""
