"""Krypton-style incremental inference: recompute only what each window changes."""
