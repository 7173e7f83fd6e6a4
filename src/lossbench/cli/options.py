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
DATA = "Data"


def in_panel(panel: str) -> Callable[..., Any]:
    """`typer.Option` with its --help panel fixed: `in_panel(LOSS)(help=...)`."""
    return functools.partial(typer.Option, rich_help_panel=panel)


training_option = in_panel(TRAINING)
loss_option = in_panel(LOSS)
model_option = in_panel(MODEL)
evaluation_option = in_panel(EVALUATION)
run_option = in_panel(RUN)
data_option = in_panel(DATA)

Preset = Annotated[
    str | None,
    training_option(
        help="Hyperparameter preset: study-s3rec (Table 2), study-aprec (Table 3) "
        "or smoke (toy scale, for CI)."
    ),
]
BatchSize = Annotated[int | None, training_option(help="Users per batch.")]
LearningRate = Annotated[float | None, training_option("--lr", help="Adam learning rate.")]
Beta2 = Annotated[float | None, training_option(help="Adam beta2.")]
WeightDecay = Annotated[float | None, training_option(help="Adam weight decay.")]
MaxEpochs = Annotated[int | None, training_option(help="Most epochs to train.")]
Patience = Annotated[
    int | None,
    training_option(help="Stop after this many epochs without a better validation metric."),
]
TimeLimit = Annotated[
    float | None,
    training_option(help="Stop training after this many seconds."),
]
Batching = Annotated[
    str | None,
    training_option(
        help="random (the study's batches, run in length-sorted parts; the default) or bucket "
        "(similar lengths share a batch: fastest, but batches differ from the study's)."
    ),
]

Positions = Annotated[
    str | None,
    loss_option(help="Training positions: all or last (default: the loss's own)."),
]
Negatives = Annotated[
    int | None,
    loss_option(help="Sampled negatives per position (sampled losses)."),
]
Sampler = Annotated[
    str | None,
    loss_option(
        help="Negative sampler: uniform, popularity, in-batch (the step's other targets) or "
        "mixed (half in-batch, half uniform)."
    ),
]
Logq = Annotated[
    str | None,
    loss_option(
        "--logq",
        metavar="[standard|corrected]",
        help="Correct the sampled softmax (sampled-ce) for its sampler: standard (also the bare "
        "--logq) subtracts log Q, the sampler's probability of each item, from every logit; "
        "corrected leaves the positive out of the normaliser and weights each position by "
        "1 - p(positive) (Khrylchenko et al. 2025). --no-logq: none.",
        show_default=False,
    ),
]
NegativesUnseen = Annotated[
    bool | None,
    loss_option(
        "--negatives-unseen/--negatives-anywhere",
        help="Draw negatives only outside the user's training history (uniform sampler; the "
        "study-s3rec preset's default, as in SASRec's and S3Rec's code).",
    ),
]
GbceT = Annotated[
    float | None,
    loss_option("--gbce-t", help="gBCE calibration t (0 = BCE)."),
]
MaskProb = Annotated[float | None, loss_option(help="Fraction of items masked by mlm.")]
SoftmaxChunk = Annotated[
    int | None,
    loss_option(
        help="Logits the full softmax holds at once (bounds memory; default 1M CPU, 64M GPU)."
    ),
]

Split = Annotated[
    str | None,
    data_option(help="loo (leave-one-out, the default) or temporal (global time thresholds)."),
]
ValidQuantile = Annotated[
    float | None,
    data_option(
        help="Temporal split: validation targets come after this quantile of interaction "
        "time (default 0.8)."
    ),
]
TestQuantile = Annotated[
    float | None,
    data_option(help="Temporal split: test targets come after this quantile (default 0.9)."),
]
ShuffleTrain = Annotated[
    bool | None,
    data_option(
        "--shuffle-train/--ordered-train",
        help="Train on each user's items in a random (seeded) order; evaluation keeps the "
        "true order (does order matter on this dataset?).",
        show_default=False,
    ),
]

HiddenSize = Annotated[int | None, model_option(help="Embedding / hidden size.")]
NumLayers = Annotated[int | None, model_option(help="Layers (blocks).")]
NumHeads = Annotated[int | None, model_option(help="Attention heads.")]
Dropout = Annotated[float | None, model_option(help="Hidden dropout.")]
AttentionDropout = Annotated[float | None, model_option(help="Attention dropout.")]
MaxLen = Annotated[int | None, model_option(help="Longest history fed to the model.")]

ValidationMetric = Annotated[
    str | None,
    evaluation_option(help="Early-stopping metric, e.g. ndcg@10."),
]
Ks = Annotated[
    str | None,
    evaluation_option("--ks", help="Metric cut-offs, e.g. 1,5,10,20."),
]
KeepSeen = Annotated[
    bool | None,
    evaluation_option(
        "--keep-seen/--exclude-seen",
        help="Rank items the user already has (default: excluded).",
        show_default=False,
    ),
]
SeenTargets = Annotated[
    str | None,
    evaluation_option(
        help="With seen items excluded, a target the user already has: miss (counts as not "
        "found, as in the study's code; the default) or rank (ranked among the unseen items: "
        "rewards repeating the history). Full and sampled ranking, validation and test alike."
    ),
]
EvalNegatives = Annotated[
    int | None,
    evaluation_option(help="Sampled ranking among N negatives (0 = full ranking)."),
]
EvalSampler = Annotated[
    str | None,
    evaluation_option(help="Sampled-ranking negatives: uniform or popularity."),
]

Device = Annotated[str | None, run_option(help="auto, cpu or cuda.")]
Precision = Annotated[
    str | None,
    run_option(
        help="fp32 (the default), bf16 (autocast; faster only with AVX-512 BF16, AMX or a "
        "GPU), auto (bf16 where the device has bf16 arithmetic, else fp32) or fp64 "
        "(exactness checks)."
    ),
]
Compile = Annotated[
    bool | None,
    run_option("--compile/--no-compile", help="torch.compile the model.", show_default=False),
]
Threads = Annotated[
    int | None,
    run_option(
        min=1,
        help="CPU threads for torch (default: one per core that other processes leave free, "
        "measured again during the run). Spin-waiting threads on busy cores slow training "
        "10-100x.",
    ),
]
CheckpointEvery = Annotated[
    int | None,
    run_option(
        min=0,
        help="Epochs between checkpoints a rerun continues from (default: every few minutes on "
        "CPU, every epoch on GPU; 0: none).",
    ),
]
SaveTopk = Annotated[
    int | None,
    run_option(help="Write topk.parquet with each test user's K best items."),
]
RetrainChanged = Annotated[
    bool,
    run_option(
        "--retrain-changed",
        help="Retrain runs of --out trained with other settings (their folders are kept "
        "as <run>.replaced-<time>); without it they are refused.",
    ),
]
Markdown = Annotated[
    Path | None,
    run_option(
        "--markdown",
        help="Also write the table as markdown to this file (ready to paste into docs).",
    ),
]
ConfigFile = Annotated[
    Path | None,
    run_option("--config", help="TOML file of settings (flags override it)."),
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
