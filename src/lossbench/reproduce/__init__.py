"""Reproduce the study's tables: plans of comparisons, and the published numbers beside them."""

# How far (relative) a cell may lie from its published value before the report names it.
DEFAULT_TOLERANCE = 0.10
