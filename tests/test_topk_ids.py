"""`topk.parquet` (`--save-topk K`) holds each test user's K best items in internal ids and
in the source file's ids, checked against the prepared id maps and the file itself."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from lossbench.cli import app

SMALL = ["--max-epochs", "1", "--hidden-size", "8", "--max-len", "10", "--batch-size", "64"]


def shop_csv(path: Path, n_users: int = 40, length: int = 6) -> Path:
    """customer,sku,ts rows with string ids that sort unlike their internal ids."""
    rows = ["customer,sku,ts"]
    for user in range(n_users):
        for step in range(length):
            sku = f"sku-{(user * 5 + step * 7) % 12:02d}"
            rows.append(f"cust-{user * 37 % 101},{sku},{1_600_000_000 + 60 * step + user}")
    path.write_text("\n".join(rows) + "\n")
    return path


def last_items(csv: Path) -> dict[str, str]:
    """Each customer's latest sku in the file: the leave-one-out test target."""
    frame = pl.read_csv(csv).sort("ts").group_by("customer").agg(pl.col("sku").last())
    return dict(zip(frame["customer"], frame["sku"], strict=True))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir with the `shop` dataset added and prepared, the source file)."""
    root = tmp_path_factory.mktemp("shop")
    csv = shop_csv(root / "shop.csv")
    options = ["--user-col", "customer", "--item-col", "sku", "--time-col", "ts"]
    result = CliRunner().invoke(
        app, ["--data-dir", str(root / "data"), "add-dataset", "shop", "--file", str(csv), *options]
    )
    assert result.exit_code == 0, result.output
    return root / "data", csv


def train_with_topk(data: Path, out: Path, *extra: str) -> pl.DataFrame:
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(data), "train", "--dataset", "shop", "--loss", "improved"]
        + ["--save-topk", "5", "--out", str(out), *SMALL, *extra],
    )
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out / "topk.parquet")


def test_topk_holds_original_ids_beside_internal_ones(
    shop: tuple[Path, Path], tmp_path: Path
) -> None:
    data, csv = shop
    topk = train_with_topk(data, tmp_path / "run")
    assert topk.columns == [
        "user", "target", "topk", "original_user", "original_target", "original_topk"
    ]  # fmt: skip
    assert topk.height == 40 and topk["topk"].list.len().to_list() == [5] * 40
    users = pl.read_parquet(data / "shop/prepared/users.parquet")
    items = pl.read_parquet(data / "shop/prepared/items.parquet")
    user_id = dict(zip(users["user"], users["original_id"], strict=True))
    item_id = dict(zip(items["item"], items["original_id"], strict=True))
    for row in topk.iter_rows(named=True):
        assert row["original_user"] == user_id[row["user"]]
        assert row["original_target"] == item_id[row["target"]]
        assert row["original_topk"] == [item_id[item] for item in row["topk"]]
    targets = last_items(csv)
    assert dict(zip(topk["original_user"], topk["original_target"], strict=True)) == targets
    assert any(user_id[user] != f"cust-{user}" for user in user_id)  # the maps do map


def test_a_user_sample_keeps_the_original_ids(shop: tuple[Path, Path], tmp_path: Path) -> None:
    """--sample-users renumbers users and items: the original ids still name the source's."""
    data, csv = shop
    topk = train_with_topk(data, tmp_path / "run", "--sample-users", "15")
    assert topk.height == 15
    targets = last_items(csv)
    assert set(topk["original_user"]) < set(targets)
    for row in topk.iter_rows(named=True):
        assert row["original_target"] == targets[row["original_user"]]
    skus = {f"sku-{n:02d}" for n in range(12)}
    assert all(set(best) <= skus and len(set(best)) == 5 for best in topk["original_topk"])
