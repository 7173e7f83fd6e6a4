"""Data flow: download -> preprocess (polars -> parquet) -> prepared arrays -> batches."""
