"""`lossbench add-dataset`: a local interactions file becomes a dataset like the built-ins."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner, Result

from lossbench.cli import app, main
from lossbench.data.preprocess import build_tables
from lossbench.data.readers import read_movielens_csv
from lossbench.data.registry import Protocol, load_registry
from lossbench.errors import LossbenchError

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"
ML_SMALL = MIRROR / "ml-latest-small" / "ml-latest-small.zip"

SMALL = ["--max-epochs", "1", "--hidden-size", "8", "--max-len", "10", "--batch-size", "64"]


def run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])


def error_of(result: Result) -> str:
    assert isinstance(result.exception, LossbenchError), result.output
    return str(result.exception)


def shop_rows(n_users: int = 40, length: int = 6) -> list[str]:
    """customer,sku,ts,stars rows: string ids, each user `length` items over 12 skus."""
    rows = []
    for user in range(n_users):
        for step in range(length):
            sku = f"sku-{(user * 5 + step * 7) % 12:02d}"
            rows.append(f"u{user},{sku},{1_600_000_000 + 60 * step},{1 + (user + step) % 5}")
    return rows


def write_csv(path: Path, rows: list[str], header: str = "customer,sku,ts,stars") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


SHOP = ["--user-col", "customer", "--item-col", "sku", "--time-col", "ts"]


def test_a_csv_with_string_ids_is_registered_prepared_and_compared(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    result = run(data, "add-dataset", "shop", "--file", str(csv), *SHOP)
    assert result.exit_code == 0, result.output
    assert "registered shop in" in result.output and "40" in result.output

    registry = data / "user-datasets.toml"
    entry = load_registry(data_dir=data)["shop"]
    assert entry.format == "csv" and entry.columns.user == "customer"
    assert entry.local_file is not None
    assert entry.local_file.path == str(csv) and entry.local_file.size == csv.stat().st_size
    assert entry.local_file.sha256 == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert "[shop.local_file]" in registry.read_text()
    meta = json.loads((data / "shop/prepared/meta.json").read_text())
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (40, 12, 240)
    users = pl.read_parquet(data / "shop/prepared/users.parquet")
    assert users["original_id"].to_list()[:3] == ["u0", "u1", "u10"]  # string order

    assert "shop" in run(data, "datasets").output
    assert "already prepared" in run(data, "preprocess", "shop").output
    out = tmp_path / "runs"
    compared = run(
        data, "compare", "--dataset", "shop", "--losses", "improved,bce", "--seeds", "0",
        "--out", str(out), *SMALL,
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "| bce (base) |" in (out / "summary.md").read_text()  # sasrec's own loss
    trained = run(data, "train", "--dataset", "shop", "--out", str(tmp_path / "one"), *SMALL)
    assert trained.exit_code == 0, trained.output


def test_a_changed_file_is_refused_until_registered_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    assert run(data, "add-dataset", "shop", "--file", str(csv), *SHOP).exit_code == 0
    write_csv(csv, shop_rows(n_users=41))
    for args in (("preprocess", "shop"), ("train", "--dataset", "shop", *SMALL)):
        message = error_of(run(data, *args))
        assert "shop.csv changed since it was registered" in message
        assert "add-dataset shop --file" in message and "--force" in message
    assert "already registered" in error_of(
        run(data, "add-dataset", "shop", "--file", str(csv), *SHOP)
    )
    again = run(data, "add-dataset", "shop", "--file", str(csv), *SHOP, "--force")
    assert again.exit_code == 0 and "replaced shop" in again.output
    assert json.loads((data / "shop/prepared/meta.json").read_text())["n_users"] == 41


def test_ensure_prepared_follows_the_registered_version(tmp_path: Path) -> None:
    """Registered again with --force elsewhere (a shared registry), the next run prepares the
    new version instead of training on the old prepared files."""
    from lossbench.data.store import ensure_prepared

    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    assert run(data, "add-dataset", "shop", "--file", str(csv), *SHOP).exit_code == 0
    assert ensure_prepared(data, "shop").n_users == 40
    other = write_csv(tmp_path / "more.csv", shop_rows(n_users=45))
    registry = data / "user-datasets.toml"
    text = registry.read_text().replace(str(csv), str(other))
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    entry = load_registry(data_dir=data)["shop"]
    assert entry.local_file is not None
    text = text.replace(entry.local_file.sha256, digest)
    text = text.replace(f"size = {entry.local_file.size}", f"size = {other.stat().st_size}")
    registry.write_text(text)
    assert ensure_prepared(data, "shop").n_users == 45


def test_names_may_not_shadow_built_ins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    message = error_of(run(data, "add-dataset", "ml-1m", "--file", str(csv), *SHOP))
    assert "'ml-1m' is a built-in dataset; choose another name" in message
    assert "must start with a letter" in error_of(
        run(data, "add-dataset", "../up", "--file", str(csv), *SHOP)
    )
    # A hand-edited registry cannot take a built-in name either.
    assert run(data, "add-dataset", "shop", "--file", str(csv), *SHOP).exit_code == 0
    registry = data / "user-datasets.toml"
    registry.write_text(registry.read_text().replace("[shop", "[lastfm"))
    assert "takes the name of a built-in dataset" in error_of(run(data, "datasets"))


def test_a_shared_registry_by_option_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = tmp_path / "team-datasets.toml"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    args = ["--registry", str(team), "--data-dir", str(tmp_path / "a")]
    result = CliRunner().invoke(app, [*args, "add-dataset", "shop", "--file", str(csv), *SHOP])
    assert result.exit_code == 0, result.output
    assert team.is_file() and not (tmp_path / "a" / "user-datasets.toml").exists()
    # A colleague with another data dir uses the same registry through the environment.
    monkeypatch.setenv("LOSSBENCH_REGISTRY", str(team))
    listed = run(tmp_path / "b", "datasets")
    assert "shop" in listed.output
    assert run(tmp_path / "b", "preprocess", "shop").exit_code == 0
    monkeypatch.setenv("LOSSBENCH_REGISTRY", str(tmp_path / "missing.toml"))
    assert "pass --registry" in error_of(run(tmp_path / "b", "preprocess", "shop"))


def test_relative_paths_in_a_registry_are_relative_to_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    assert run(data, "add-dataset", "shop", "--file", str(csv), *SHOP).exit_code == 0
    registry = data / "user-datasets.toml"
    registry.write_text(registry.read_text().replace(str(csv), "../shop.csv"))
    entry = load_registry(data_dir=data)["shop"]
    assert entry.local_file is not None and Path(entry.local_file.path).resolve() == csv


def test_tsv_parquet_ratings_and_fractional_times(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [row.split(",") for row in shop_rows()]
    frame = pl.DataFrame(
        {
            "customer": [int(r[0][1:]) for r in rows],  # integer ids
            "sku": [r[1] for r in rows],
            "ts": [int(r[2]) + 0.5 for r in rows],  # fractional seconds: ranked
            "stars": [float(r[3]) for r in rows],
        }
    )
    frame.write_parquet(tmp_path / "shop.parquet")
    args = ["--file", str(tmp_path / "shop.parquet"), *SHOP, "--rating-col", "stars"]
    result = run(data, "add-dataset", "rated", *args, "--min-rating", "3")
    assert result.exit_code == 0, result.output
    kept = frame.filter(pl.col("stars") >= 3)
    meta = json.loads((data / "rated/prepared/meta.json").read_text())
    assert meta["n_interactions"] == kept.height
    assert meta["protocol"]["min_rating"] == 3.0
    frame.write_csv(tmp_path / "shop.tsv", separator="\t")
    tsv = run(data, "add-dataset", "tabbed", "--file", str(tmp_path / "shop.tsv"), *SHOP)
    assert tsv.exit_code == 0, tsv.output
    assert json.loads((data / "tabbed/prepared/meta.json").read_text())["n_users"] == 40


BAD_INPUTS = [
    (
        "missing column",
        lambda p: write_csv(p / "f.csv", shop_rows(), header="customer,product,ts,stars"),
        [],
        "f.csv has no column 'sku' (columns found: customer, product, ts, stars)",
    ),
    ("no such file", lambda p: p / "absent.csv", [], "absent.csv cannot be read"),
    ("a folder", lambda p: (p / "dir.csv").mkdir() or p / "dir.csv", [], "is a folder"),
    (
        "not parquet",
        lambda p: (p / "f.parquet").write_bytes(b"\x00garbage\xff" * 10) and p / "f.parquet",
        [],
        "f.parquet cannot be read as parquet",
    ),
    (
        "empty after filtering",
        lambda p: write_csv(p / "f.csv", []),
        [],
        "nothing is left after filtering",
    ),
    (
        "rating filter keeps nothing",
        lambda p: write_csv(p / "f.csv", shop_rows()),
        ["--rating-col", "stars", "--min-rating", "9"],
        "nothing is left after filtering",
    ),
    (
        "a short user",
        lambda p: write_csv(p / "f.csv", [*shop_rows(), "lonely,sku-01,5,1", "lonely,sku-02,6,1"]),
        [],
        "1 users of shop have fewer than 3 interactions after filtering",
    ),
    (
        "text times",
        lambda p: write_csv(p / "f.csv", [*shop_rows(), "u1,sku-03,2020-01-02,4"]),
        [],
        "f.csv line 242: column 'ts' holds '2020-01-02', not a number",
    ),
    (
        "an empty id",
        lambda p: write_csv(p / "f.csv", [*shop_rows(), ",sku-03,7,4"]),
        [],
        "f.csv line 242: column 'customer' holds nothing, not an id",
    ),
    (
        "min rating without ratings",
        lambda p: write_csv(p / "f.csv", shop_rows()),
        ["--min-rating", "3"],
        "--min-rating needs --rating-col",
    ),
    ("unknown suffix", lambda p: write_csv(p / "f.xlsx", shop_rows()), [], "pass --format"),
]


@pytest.mark.parametrize(
    ("case", "make", "extra", "words"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    make: object,
    extra: list[str],
    words: str,
) -> None:
    data = tmp_path / "data"
    path = make(tmp_path)  # type: ignore[operator]
    argv = ["lossbench", "--data-dir", str(data), "add-dataset", "shop", "--file", str(path)]
    monkeypatch.setattr(sys, "argv", [*argv, *SHOP, *extra])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    assert not (data / "user-datasets.toml").exists()
    assert not (data / "shop").exists()


@pytest.mark.skipif(not ML_SMALL.is_file(), reason=f"real data mirror {ML_SMALL} is absent")
def test_the_movielens_ratings_file_under_other_column_names(tmp_path: Path) -> None:
    with zipfile.ZipFile(ML_SMALL) as archive:
        archive.extract("ml-latest-small/ratings.csv", tmp_path)
    original = tmp_path / "ml-latest-small" / "ratings.csv"
    renamed = tmp_path / "my-ratings.csv"
    columns = {"userId": "viewer", "movieId": "film", "rating": "stars", "timestamp": "when"}
    pl.read_csv(original).rename(columns).write_csv(renamed)
    data = tmp_path / "data"
    args = ["--user-col", "viewer", "--item-col", "film", "--time-col", "when"]
    args += ["--rating-col", "stars", "--user-core", "5"]
    result = run(data, "add-dataset", "my-ml", "--file", str(renamed), *args)
    assert result.exit_code == 0, result.output
    # The same rows and protocol as the built-in ml-latest-small entry: the same dataset.
    expected = build_tables(read_movielens_csv(original), Protocol(user_core=5))
    meta = json.loads((data / "my-ml/prepared/meta.json").read_text())
    assert (meta["n_users"], meta["n_items"]) == (expected.users.height, expected.items.height)
    assert meta["n_interactions"] == expected.interactions.height
    split = pl.read_parquet(data / "my-ml/prepared/split.parquet")
    assert split.equals(expected.split)
    out = tmp_path / "runs"
    compared = run(
        data, "compare", "--dataset", "my-ml", "--losses", "improved,bce", "--seeds", "0",
        "--out", str(out), *SMALL,
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "losses compared on my-ml" in compared.output


def test_json_holds_the_registered_file_and_the_prepared_counts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "shop.csv", shop_rows())
    result = run(data, "add-dataset", "shop", "--file", str(csv), *SHOP, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the table and the line went to standard error
    assert document["name"] == "shop" and document["replaced"] is False
    assert document["registry"] == str(data / "user-datasets.toml")
    assert document["file"]["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert document["file"]["size"] == csv.stat().st_size
    assert document["meta"] == json.loads((data / "shop/prepared/meta.json").read_text())
    assert (document["meta"]["n_users"], document["meta"]["n_items"]) == (40, 12)
    assert "registered shop in" in result.stderr
