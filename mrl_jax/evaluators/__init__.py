"""Evaluators that report every nesting dim."""
