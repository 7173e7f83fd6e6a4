"""Reproduce the study's tables: plans of comparisons, and the published numbers beside them."""
