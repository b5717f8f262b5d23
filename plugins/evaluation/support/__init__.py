"""Helpers shared by the evaluation metrics (the math of each metric family, regions, perturbations)."""
