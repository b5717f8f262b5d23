"""Magnitude pruning analysis: weight statistics and accuracy under global pruning."""
