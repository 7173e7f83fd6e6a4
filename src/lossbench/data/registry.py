"""The dataset registry: `datasets.toml` read into validated pydantic models.

The built-in file is found, in order, at `$LOSSBENCH_DATASETS`, as package data
`lossbench/datasets.toml` (a wheel install), or at the repository root (an editable install).
A user registry of the same schema adds the user's own interaction files (`lossbench
add-dataset`): `--registry FILE` or `$LOSSBENCH_REGISTRY`, else `user-datasets.toml` in the
data dir. Its entries may not take a built-in name.
"""

from __future__ import annotations

import difflib
import os
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lossbench.errors import LossbenchError, one_of, validation_failure
from lossbench.paths import USER_REGISTRY_ENV as USER_REGISTRY_ENV  # set by the CLI
from lossbench.paths import USER_REGISTRY_FILE as USER_REGISTRY_FILE
from lossbench.paths import UserRegistry as UserRegistry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the `tomli` backport
    import tomli as tomllib

# A user's own file of interactions (`local_files.py`), columns named in [NAME.columns].
LOCAL_FORMATS = ("csv", "tsv", "parquet")
# Formats with a reader in `readers.py`, plus the generated one and the local ones.
FORMATS = (
    "movielens-dat",
    "movielens-csv",
    "movielens-tsv",
    "s3rec",
    "bert4rec",
    "steam",
    "amazon-csv",
    "amazon23-csv",
    "yambda-parquet",
    "synthetic",
    *LOCAL_FORMATS,
)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RemoteFile(_Strict):
    """One file to fetch. Without a pinned sha256 the user confirms the hash on first download."""

    url: str
    size: int | None = Field(default=None, gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    confirm_hash_on_first_download: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or not parsed.path:
            raise ValueError("must be an http(s) URL naming a file")
        return url

    @model_validator(mode="after")
    def _pinned_or_confirmed(self) -> RemoteFile:
        if self.sha256 is None and not self.confirm_hash_on_first_download:
            raise ValueError("sha256 is missing (or set confirm_hash_on_first_download = true)")
        return self

    @property
    def file_name(self) -> str:
        return unquote(Path(urlparse(self.url).path).name)

    @property
    def is_archive(self) -> bool:
        return self.file_name.endswith(ARCHIVE_SUFFIXES)


class LocalFile(_Strict):
    """A file on this computer, pinned by size and sha256 when it was registered."""

    path: str  # absolute, or relative to the registry file's folder
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Columns(_Strict):
    """Which columns of a local file hold what; `rating` is optional."""

    user: str = "user"
    item: str = "item"
    time: str = "timestamp"
    rating: str | None = None


class Protocol(_Strict):
    """How raw interactions become sequences (every knob can be overridden from the CLI)."""

    min_rating: float | None = None  # keep rating >= this (rows without a rating are kept)
    user_core: int = Field(default=0, ge=0)  # iterative k-core: users with >= user_core items
    item_core: int = Field(default=0, ge=0)  # ... and items with >= item_core users
    dedup: bool = True  # keep only the first (user, item) interaction
    organic_only: bool = False  # keep only organic events (formats with the flag: Yambda)

    @model_validator(mode="before")
    @classmethod
    def _drop_max_length(cls, data: Any) -> Any:
        """A registry written by an earlier lossbench may hold `max_length`, which preparation
        never read (a model's history length is its own `max_len` setting): ignored."""
        if isinstance(data, dict) and "max_length" in data:
            return {key: value for key, value in data.items() if key != "max_length"}
        return data


class SyntheticSpec(_Strict):
    """Sizes and knobs of the generated dataset (see `synthetic.py`)."""

    n_users: int = Field(default=2000, ge=1)
    n_items: int = Field(default=500, ge=4)
    mean_length: float = Field(default=30.0, ge=3)
    min_length: int = Field(default=5, ge=3)
    n_topics: int = Field(default=10, ge=1)
    n_attributes: int = Field(default=40, ge=1)
    topic_stay: float = Field(default=0.85, ge=0, le=1)  # P(next topic = current topic)
    successor_prob: float = Field(default=0.5, ge=0, le=1)  # P(next item = item's successor)
    popularity_exponent: float = Field(default=1.0, ge=0)  # Zipf skew inside a topic
    repeat_prob: float = Field(default=0.0, ge=0, le=1)  # P(next item = a recent item again)
    seed: int = 0


class DatasetEntry(_Strict):
    name: str
    source: str
    format: str
    file: RemoteFile | None = None
    member: str | None = None  # path of the interactions file inside an archive
    attributes: RemoteFile | None = None  # S3Rec `<Name>_item2attributes.json`
    protocol: Protocol = Protocol()
    generator: SyntheticSpec | None = None
    local_file: LocalFile | None = None  # the csv / tsv / parquet formats
    columns: Columns = Columns()

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return one_of(value, FORMATS, "unknown format {value!r}; valid: {names}")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetEntry:
        if (self.format in LOCAL_FORMATS) != (self.local_file is not None):
            raise ValueError(f"a local_file table goes with the formats {', '.join(LOCAL_FORMATS)}")
        if self.local_file is not None:
            if self.file is not None or self.generator is not None:
                raise ValueError("an entry with a local_file has no file or generator table")
        elif self.format == "synthetic":
            if self.file is not None or self.generator is None:
                raise ValueError("a synthetic entry has a [generator] table and no file")
        elif self.file is None:
            raise ValueError("file is missing (a [NAME.file] table with url, size, sha256)")
        elif self.file.is_archive and not self.member:
            raise ValueError("member is missing: which file inside the archive to read")
        return self

    @property
    def remote_files(self) -> list[RemoteFile]:
        return [f for f in (self.file, self.attributes) if f is not None]


Registry = dict[str, DatasetEntry]


def registry_path() -> Path:
    if env := os.environ.get("LOSSBENCH_DATASETS"):
        return Path(env)
    packaged = resources.files("lossbench") / "datasets.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "datasets.toml"


def user_registry_path(data_dir: Path | None) -> Path | None:
    """`--registry`, else `$LOSSBENCH_REGISTRY`, else `<data_dir>/user-datasets.toml`."""
    if UserRegistry.path is not None:
        return UserRegistry.path
    if env := os.environ.get(USER_REGISTRY_ENV):
        return Path(env)
    return data_dir / USER_REGISTRY_FILE if data_dir is not None else None


def is_explicit_user_registry() -> bool:
    return UserRegistry.path is not None or bool(os.environ.get(USER_REGISTRY_ENV))


def load_registry(path: Path | None = None, data_dir: Path | None = None) -> Registry:
    """The built-in registry (`path`, default `registry_path()`) and the user registry of
    `data_dir` (see `user_registry_path`); an invalid entry fails naming the entry and field."""
    builtin = load_registry_file(path or registry_path())
    user_path = user_registry_path(data_dir)
    if user_path is None or not (user_path.is_file() or is_explicit_user_registry()):
        return builtin
    user = load_registry_file(user_path, "pass --registry (or LOSSBENCH_REGISTRY) an existing file")
    for name in user:
        if name in builtin:
            raise LossbenchError(
                f"{user_path}: dataset {name!r} takes the name of a built-in dataset; "
                "rename the entry"
            )
    return {**builtin, **user}


def load_registry_file(
    path: Path, fix: str = "set LOSSBENCH_DATASETS to a datasets.toml"
) -> Registry:
    """One registry file, validated (cached while the file is unchanged)."""
    try:
        status = path.stat()
    except OSError as error:
        raise LossbenchError(
            f"dataset registry {path} cannot be read ({error.strerror}); {fix}"
        ) from None
    return _load_cached(str(path), status.st_mtime_ns, status.st_size)


@lru_cache(maxsize=8)
def _load_cached(path: str, _stamp: int, _size: int) -> Registry:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise LossbenchError(f"dataset registry {path} is not valid TOML: {error}") from None
    registry: Registry = {}
    for name, table in raw.items():
        registry[name] = _validate_entry(path, name, table)
    return registry


def _validate_entry(path: str, name: str, table: Any) -> DatasetEntry:
    if not isinstance(table, dict):
        raise LossbenchError(f"{path}: entry {name!r} must be a table [{name}]")
    local = table.get("local_file")
    if isinstance(local, dict) and isinstance(local.get("path"), str):
        # A relative path is relative to the registry file: a team shares both together.
        local_path = Path(path).parent / Path(local["path"]).expanduser()
        table = {**table, "local_file": {**local, "path": str(local_path)}}
    try:
        return DatasetEntry.model_validate({"name": name, **table})
    except ValidationError as error:
        raise validation_failure(
            error,
            lambda field, _, detail: (
                f"{path}: entry {name!r}, field {field or '(entry)'!r}: {detail['msg']}; "
                "fix the entry"
            ),
        ) from None


def get_dataset(
    name: str, registry: Registry | None = None, data_dir: Path | None = None
) -> DatasetEntry:
    """The entry named `name` (built-in or of the user registry of `data_dir`); an unknown
    name suggests the closest known one."""
    registry = registry if registry is not None else load_registry(data_dir=data_dir)
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.5)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else "run `lossbench datasets` to list them, or register a file of your own with "
        "`lossbench add-dataset`"
    )
    raise LossbenchError(f"unknown dataset {name!r}: {hint}")
