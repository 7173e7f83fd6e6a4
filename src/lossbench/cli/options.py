"""Training options shared by `train`, `compare`, `tune` and `reproduce`, defined once.

Every option defaults to None, meaning "not given": only given flags override the lower
configuration layers (defaults -> preset -> TOML file). `@training_flags` gives a command
the options every training command takes (`SHARED_FLAGS`) in place of its `training`
parameter.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import typer

TRAINING = "Training"
LOSS = "Loss"
MODEL = "Model"
EVALUATION = "Evaluation"
RUN = "Execution"

Preset = Annotated[
    str | None,
    typer.Option(
        help="Hyperparameter preset: study-s3rec (Table 2), study-aprec (Table 3) "
        "or smoke (toy scale, for CI).",
        rich_help_panel=TRAINING,
    ),
]
BatchSize = Annotated[int | None, typer.Option(help="Users per batch.", rich_help_panel=TRAINING)]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help="Adam learning rate.", rich_help_panel=TRAINING)
]
Beta2 = Annotated[float | None, typer.Option(help="Adam beta2.", rich_help_panel=TRAINING)]
WeightDecay = Annotated[
    float | None, typer.Option(help="Adam weight decay.", rich_help_panel=TRAINING)
]
MaxEpochs = Annotated[
    int | None, typer.Option(help="Most epochs to train.", rich_help_panel=TRAINING)
]
Patience = Annotated[
    int | None,
    typer.Option(
        help="Stop after this many epochs without a better validation metric.",
        rich_help_panel=TRAINING,
    ),
]
TimeLimit = Annotated[
    float | None,
    typer.Option(help="Stop training after this many seconds.", rich_help_panel=TRAINING),
]
Batching = Annotated[
    str | None,
    typer.Option(
        help="random (the study's batches, run in length-sorted parts; the default) or bucket "
        "(similar lengths share a batch: fastest, but batches differ from the study's).",
        rich_help_panel=TRAINING,
    ),
]

Positions = Annotated[
    str | None,
    typer.Option(
        help="Training positions: all or last (default: the loss's own).", rich_help_panel=LOSS
    ),
]
Negatives = Annotated[
    int | None,
    typer.Option(help="Sampled negatives per position (sampled losses).", rich_help_panel=LOSS),
]
Sampler = Annotated[
    str | None,
    typer.Option(
        help="Negative sampler: uniform, popularity, in-batch (the step's other targets) or "
        "mixed (half in-batch, half uniform).",
        rich_help_panel=LOSS,
    ),
]
Logq = Annotated[
    str | None,
    typer.Option(
        "--logq",
        metavar="[standard|corrected]",
        help="Correct the sampled softmax (sampled-ce) for its sampler: standard (also the bare "
        "--logq) subtracts log Q, the sampler's probability of each item, from every logit; "
        "corrected leaves the positive out of the normaliser and weights each position by "
        "1 - p(positive) (Khrylchenko et al. 2025). --no-logq: none.",
        rich_help_panel=LOSS,
        show_default=False,
    ),
]
NegativesUnseen = Annotated[
    bool | None,
    typer.Option(
        "--negatives-unseen/--negatives-anywhere",
        help="Draw negatives only outside the user's training history (uniform sampler; the "
        "study-s3rec preset's default, as in SASRec's and S3Rec's code).",
        rich_help_panel=LOSS,
    ),
]
GbceT = Annotated[
    float | None,
    typer.Option("--gbce-t", help="gBCE calibration t (0 = BCE).", rich_help_panel=LOSS),
]
MaskProb = Annotated[
    float | None, typer.Option(help="Fraction of items masked by mlm.", rich_help_panel=LOSS)
]
SoftmaxChunk = Annotated[
    int | None,
    typer.Option(
        help="Logits the full softmax holds at once (bounds memory; default 1M CPU, 64M GPU).",
        rich_help_panel=LOSS,
    ),
]

DATA = "Data"
Split = Annotated[
    str | None,
    typer.Option(
        help="loo (leave-one-out, the default) or temporal (global time thresholds).",
        rich_help_panel=DATA,
    ),
]
ValidQuantile = Annotated[
    float | None,
    typer.Option(
        help="Temporal split: validation targets come after this quantile of interaction "
        "time (default 0.8).",
        rich_help_panel=DATA,
    ),
]
TestQuantile = Annotated[
    float | None,
    typer.Option(
        help="Temporal split: test targets come after this quantile (default 0.9).",
        rich_help_panel=DATA,
    ),
]
ShuffleTrain = Annotated[
    bool | None,
    typer.Option(
        "--shuffle-train/--ordered-train",
        help="Train on each user's items in a random (seeded) order; evaluation keeps the "
        "true order (does order matter on this dataset?).",
        rich_help_panel=DATA,
        show_default=False,
    ),
]

HiddenSize = Annotated[
    int | None, typer.Option(help="Embedding / hidden size.", rich_help_panel=MODEL)
]
NumLayers = Annotated[int | None, typer.Option(help="Layers (blocks).", rich_help_panel=MODEL)]
NumHeads = Annotated[int | None, typer.Option(help="Attention heads.", rich_help_panel=MODEL)]
Dropout = Annotated[float | None, typer.Option(help="Hidden dropout.", rich_help_panel=MODEL)]
AttentionDropout = Annotated[
    float | None, typer.Option(help="Attention dropout.", rich_help_panel=MODEL)
]
MaxLen = Annotated[
    int | None, typer.Option(help="Longest history fed to the model.", rich_help_panel=MODEL)
]

ValidationMetric = Annotated[
    str | None,
    typer.Option(help="Early-stopping metric, e.g. ndcg@10.", rich_help_panel=EVALUATION),
]
Ks = Annotated[
    str | None,
    typer.Option("--ks", help="Metric cut-offs, e.g. 1,5,10,20.", rich_help_panel=EVALUATION),
]
KeepSeen = Annotated[
    bool | None,
    typer.Option(
        "--keep-seen/--exclude-seen",
        help="Rank items the user already has (default: excluded).",
        rich_help_panel=EVALUATION,
        show_default=False,
    ),
]
SeenTargets = Annotated[
    str | None,
    typer.Option(
        help="With seen items excluded, a target the user already has: miss (counts as not "
        "found, as in the study's code; the default) or rank (ranked among the unseen items: "
        "rewards repeating the history). Full and sampled ranking, validation and test alike.",
        rich_help_panel=EVALUATION,
    ),
]
EvalNegatives = Annotated[
    int | None,
    typer.Option(
        help="Sampled ranking among N negatives (0 = full ranking).", rich_help_panel=EVALUATION
    ),
]
EvalSampler = Annotated[
    str | None,
    typer.Option(
        help="Sampled-ranking negatives: uniform or popularity.", rich_help_panel=EVALUATION
    ),
]

Device = Annotated[str | None, typer.Option(help="auto, cpu or cuda.", rich_help_panel=RUN)]
Precision = Annotated[
    str | None,
    typer.Option(
        help="fp32 (the default), bf16 (autocast; faster only with AVX-512 BF16, AMX or a "
        "GPU), auto (bf16 where the device has bf16 arithmetic, else fp32) or fp64 "
        "(exactness checks).",
        rich_help_panel=RUN,
    ),
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the model.",
        rich_help_panel=RUN,
        show_default=False,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads for torch (default: one per core that other processes leave free, "
        "measured again during the run). Spin-waiting threads on busy cores slow training "
        "10-100x.",
        rich_help_panel=RUN,
    ),
]
CheckpointEvery = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Epochs between checkpoints a rerun continues from (default: every few minutes on "
        "CPU, every epoch on GPU; 0: none).",
        rich_help_panel=RUN,
    ),
]
SaveTopk = Annotated[
    int | None,
    typer.Option(
        help="Write topk.parquet with each test user's K best items.", rich_help_panel=RUN
    ),
]
RetrainChanged = Annotated[
    bool,
    typer.Option(
        "--retrain-changed",
        help="Retrain runs of --out trained with other settings (their folders are kept "
        "as <run>.replaced-<time>); without it they are refused.",
        rich_help_panel=RUN,
    ),
]
Markdown = Annotated[
    Path | None,
    typer.Option(
        "--markdown",
        help="Also write the table as markdown to this file (ready to paste into docs).",
        rich_help_panel=RUN,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML file of settings (flags override it).", rich_help_panel=RUN
    ),
]


# The options of every training command, in the order `--help` lists them.
SHARED_FLAGS: dict[str, Any] = {
    "batch_size": BatchSize,
    "lr": LearningRate,
    "beta2": Beta2,
    "weight_decay": WeightDecay,
    "max_epochs": MaxEpochs,
    "patience": Patience,
    "time_limit": TimeLimit,
    "batching": Batching,
    "positions": Positions,
    "negatives": Negatives,
    "sampler": Sampler,
    "logq": Logq,
    "negatives_unseen": NegativesUnseen,
    "gbce_t": GbceT,
    "mask_prob": MaskProb,
    "softmax_chunk": SoftmaxChunk,
    "split": Split,
    "valid_quantile": ValidQuantile,
    "test_quantile": TestQuantile,
    "shuffle_train": ShuffleTrain,
    "hidden_size": HiddenSize,
    "num_layers": NumLayers,
    "num_heads": NumHeads,
    "dropout": Dropout,
    "attention_dropout": AttentionDropout,
    "max_len": MaxLen,
    "validation_metric": ValidationMetric,
    "ks": Ks,
    "keep_seen": KeepSeen,
    "seen_targets": SeenTargets,
    "eval_negatives": EvalNegatives,
    "eval_sampler": EvalSampler,
    "device": Device,
    "precision": Precision,
    "compile": Compile,
    "threads": Threads,
}
# What a `@training_flags` command's `training` parameter holds: SHARED_FLAGS' values.
TrainingFlags = Mapping[str, Any]
NO_FLAGS: TrainingFlags = MappingProxyType({})

Command = Callable[..., None]


def training_flags(command: Command) -> Command:
    """`command` with SHARED_FLAGS as typer options where its `training` parameter stands;
    it receives their values (None: not given) as the one mapping `training`."""
    signature = inspect.signature(command, eval_str=True)
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=flag)
        for name, flag in SHARED_FLAGS.items()
    ]
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name == "training":
            parameters += shared
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def with_flags(**flags: Any) -> None:
        training = {name: flags.pop(name) for name in SHARED_FLAGS}
        command(**flags, training=MappingProxyType(training))

    with_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_flags.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_flags


# Parameters every command takes that are no training setting: `--data-dir` after the
# command, and the command line's context that holds the data directory.
GLOBAL_FLAGS = ("data_dir", "context")
# Flags that become `model_settings` entries rather than top-level TrainConfig fields.
MODEL_FLAGS = ("hidden_size", "num_layers", "num_heads", "dropout", "attention_dropout", "max_len")


def training_overrides(flags: Mapping[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """The TrainConfig override layer from a command's flags (pass the command's `locals()`).

    Renames and parses where flag and field differ (`--keep-seen` -> `exclude_seen`, `--ks`
    text -> list) and groups the model flags; `skip` names the command's own non-config flags.
    A flag that is neither a TrainConfig field nor skipped is a programming error.
    """
    from lossbench.training.config import TrainConfig

    flags = {**flags, **flags.get("training", NO_FLAGS)}  # a `@training_flags` command's
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if name == "training":
            continue
        if name in skip or name in MODEL_FLAGS or name in GLOBAL_FLAGS:
            continue
        if name == "keep_seen":
            overrides["exclude_seen"] = None if value is None else not value
        elif name == "ks":
            overrides["ks"] = parse_ks(value)
        elif name in TrainConfig.model_fields:
            overrides[name] = value
        else:
            raise TypeError(f"flag {name!r} is not a TrainConfig field; add it to `skip`")
    overrides["model_settings"] = model_settings(**{n: flags.get(n) for n in MODEL_FLAGS})
    return overrides


def model_settings(**given: Any) -> dict[str, Any]:
    """The model flags the user gave (None = not given)."""
    return {name: value for name, value in given.items() if value is not None}


def parse_ks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from lossbench.errors import LossbenchError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LossbenchError(
            f"--ks must be comma-separated integers such as 1,5,10,20, not {text!r}"
        ) from None
