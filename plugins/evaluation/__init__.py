"""Evaluation metrics: how far an attribution method can be trusted."""
