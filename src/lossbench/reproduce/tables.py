"""The study's tables as data: which models, which losses, which preset, what is pre-trained.

A table is a list of cells, one (model, loss, negatives) each, the same key as a row of
`published.csv`; `negatives` is None where the loss ran with its published default. A cell
becomes a comparison's loss arm (`arm_entry`): a plain loss name, or a table that sets its
negatives. Each model's first cell is its original loss, the baseline its other cells are
tested against, so "the published direction" of a cell is the sign of its published value
minus its baseline's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from lossbench.reproduce.published import TABLE_TITLES, TableName, published_datasets

# Pre-training epochs the study fine-tuned from; the datasets it does not name get the first.
PRETRAIN_EPOCHS: dict[str, int] = {"default": 150, "sports": 100, "yelp": 100}
PRETRAIN_SEED = 0  # one pre-training per dataset, shared by every fine-tuning seed (as the study)


class Cell(BaseModel):
    """One row of a reproduction: a model trained with one loss (and negatives, if named)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    loss: str
    negatives: int | None = None  # None: the loss's own default

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.model, self.loss, self.negatives)


class ReproductionTable(BaseModel):
    """A published table: its cells, the preset it was trained with, what is pre-trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TableName
    preset: str
    cells: tuple[Cell, ...]
    pretrained: tuple[str, ...] = ()  # models pre-trained on the dataset before fine-tuning

    @model_validator(mode="after")
    def _cells_once(self) -> ReproductionTable:
        keys = [cell.key for cell in self.cells]
        if len(set(keys)) < len(keys):
            raise ValueError(f"{self.name} lists a cell twice")
        for model in self.pretrained:
            if model not in self.models:
                raise ValueError(f"{self.name} pre-trains {model}, which none of its cells uses")
        return self

    @property
    def title(self) -> str:
        return TABLE_TITLES[self.name]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(cell.model for cell in self.cells))

    def cells_of(self, model: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.model == model]

    def baseline_of(self, model: str) -> Cell:
        """The model's original loss: its first cell."""
        return self.cells_of(model)[0]

    @property
    def published_datasets(self) -> list[str]:
        return published_datasets(self.name)


def arm_entry(cell: Cell, default_negatives: int) -> str | dict[str, Any]:
    """The `[grid]` losses entry of `cell`: its loss name, or a table naming its negatives
    when they differ from the loss's default (`default_negatives`)."""
    if cell.negatives is None or cell.negatives == default_negatives:
        return cell.loss
    return {"loss": cell.loss, "negatives": cell.negatives}


def pretrain_epochs(dataset: str) -> int:
    return PRETRAIN_EPOCHS.get(dataset, PRETRAIN_EPOCHS["default"])


def _cells(*keys: tuple[str, str] | tuple[str, str, int]) -> tuple[Cell, ...]:
    return tuple(Cell(model=key[0], loss=key[1], negatives=(key[2:] or (None,))[0]) for key in keys)


TABLES: dict[str, ReproductionTable] = {
    "table2": ReproductionTable(
        name="table2",
        preset="study-s3rec",
        cells=_cells(
            ("gru4rec", "ce"),
            ("gru4rec", "improved"),
            ("srgnn", "ce"),
            ("srgnn", "improved"),
            ("sasrec", "bce"),
            ("sasrec", "improved"),
            ("s3rec", "bce"),
            ("s3rec", "improved"),
        ),
        pretrained=("s3rec",),
    ),
    "table3": ReproductionTable(
        name="table3",
        preset="study-aprec",
        cells=_cells(("sasrec", "bce"), ("bert4rec", "mlm"), ("sasrec", "improved")),
    ),
    # The sweep's bce with 1,000 negatives is published too, but needs ~13 GB and 10x the
    # time of the others; compare it on its own (`compare --negatives 1000`).
    "loss-sweep": ReproductionTable(
        name="loss-sweep",
        preset="study-s3rec",
        cells=_cells(
            ("sasrec", "bce", 1),
            ("sasrec", "bce", 10),
            ("sasrec", "bce", 100),
            ("sasrec", "bpr", 10),
            ("sasrec", "bpr-max", 10),
            ("sasrec", "top1", 10),
            ("sasrec", "top1-max", 10),
            ("sasrec", "ce"),
            ("sasrec", "improved"),
        ),
    ),
}


def get_table(name: str) -> ReproductionTable:
    from lossbench.errors import LossbenchError

    if name not in TABLES:
        raise LossbenchError(
            f"unknown table {name!r}; choose from {', '.join(TABLES)} (see `reproduce --list`)"
        )
    return TABLES[name]
