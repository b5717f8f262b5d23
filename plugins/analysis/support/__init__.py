"""Helpers shared by the analysis methods."""
