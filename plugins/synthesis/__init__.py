"""Synthesis methods: images made by optimization or search."""
