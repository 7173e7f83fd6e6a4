"""The study's published numbers load, validate, and name only what lossbench has."""

from __future__ import annotations

from lossbench.data.registry import load_registry
from lossbench.losses import LOSSES
from lossbench.models import MODELS
from lossbench.reproduce.published import (
    TABLE_TITLES,
    published_datasets,
    published_value,
    published_values,
)


def test_every_row_names_a_known_table_dataset_model_and_loss() -> None:
    registry = load_registry()
    rows = published_values()
    assert len(rows) == 76
    for row in rows:
        assert row.table in TABLE_TITLES
        assert row.dataset in registry
        assert row.model in MODELS
        assert row.loss in LOSSES


def test_cells_read_back_the_study_s_numbers() -> None:
    assert published_value("table2", "lastfm", "sasrec", "improved", "ndcg@10") == 0.0354
    assert published_value("table3", "ml-1m", "bert4rec", "mlm", "hr@10") == 0.2594
    assert published_value("loss-sweep", "beauty-s3rec", "sasrec", "bce", "hr@10", 100) == 0.0652
    assert published_value("table3", "steam", "bert4rec", "mlm", "hr@10") is None


def test_datasets_per_table() -> None:
    assert published_datasets("table2") == ["lastfm", "beauty-s3rec"]
    assert published_datasets("table3") == ["ml-1m", "ml-20m", "steam", "beauty", "beauty-s3rec"]
    assert published_datasets("loss-sweep") == ["beauty-s3rec"]
