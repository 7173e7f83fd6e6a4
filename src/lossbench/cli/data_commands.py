"""`lossbench datasets`, `download`, `preprocess` (filled in by the data layer)."""
