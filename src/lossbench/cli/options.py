"""The options several commands share, defined once: training options (`train`, `compare`,
`tune`, `reproduce`) and options for pipelines and tracking.

Every training option defaults to None, meaning "not given": only given flags override the lower
configuration layers (defaults -> preset -> TOML file). `TrainingOptions` is the group of
options every training command takes (`lossbench.cli.groups`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

TRAINING = "Training"
LOSS = "Loss"
MODEL = "Model"
EVALUATION = "Evaluation"
RUN = "Execution"
DATA = "Data"
CI = "CI and tracking"


def in_panel(panel: str) -> Callable[..., Any]:
    """`typer.Option` with its --help panel fixed: `in_panel(LOSS)(help=...)`."""
    return functools.partial(typer.Option, rich_help_panel=panel)


training_option = in_panel(TRAINING)
loss_option = in_panel(LOSS)
model_option = in_panel(MODEL)
evaluation_option = in_panel(EVALUATION)
run_option = in_panel(RUN)
data_option = in_panel(DATA)
ci_option = in_panel(CI)

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
Init = Annotated[Path | None, run_option(help="Pre-trained checkpoint to fine-tune (s3rec).")]
ConfigFile = Annotated[
    Path | None,
    run_option("--config", help="TOML file of settings (flags override it)."),
]


Smoke = Annotated[
    bool,
    ci_option(
        "--smoke",
        help="Toy settings for CI (preset smoke: 1 block of width 32, 5 epochs, at most 1000 "
        "users): a 3-loss comparison on synthetic data trains in seconds.",
    ),
]
SampleUsers = Annotated[
    int | None,
    ci_option(
        min=1, help="Train and test on a fixed, seeded sample of N users (the same for every run)."
    ),
]
Expect = Annotated[
    list[str] | None,
    ci_option(
        "--expect",
        help="Exit 1 unless this holds, e.g. 'improved > bce', 'improved > bce significant', "
        "'ndcg@10(improved) >= 0.05', 'hr@10(a) >= 0.9 * hr@10(b)' (repeatable; a grid "
        "file's top-level expect = [...] adds more).",
    ),
]
JsonOutput = Annotated[
    bool,
    ci_option(
        "--json",
        help="Print one JSON document of the results on standard output "
        "(the display goes to standard error).",
    ),
]
Junit = Annotated[
    Path | None,
    ci_option(help="Write a JUnit XML report (expectations, failed runs)."),
]
Track = Annotated[
    str | None,
    ci_option(
        help="Log runs to mlflow (a store in the output folder, or MLFLOW_TRACKING_URI) or "
        "tensorboard (event files in the output folder)."
    ),
]

AllowCollapsed = Annotated[
    bool,
    ci_option(
        "--allow-collapsed",
        help="Judge --expect on a loss's runs that did not collapse (no better than the "
        "popularity floor on validation, or a non-finite loss) instead of failing it.",
    ),
]
MemoryBudget = Annotated[
    str | None,
    ci_option(
        help="Refuse, before training, any run whose estimated peak memory exceeds this "
        "(e.g. 8GB; binary units), naming the setting to lower; prints each loss's estimate."
    ),
]


@dataclass(frozen=True)
class ModelOptions:
    """The model options, for a command that trains no loss (`pretrain`; an option group)."""

    hidden_size: HiddenSize = None
    num_layers: NumLayers = None
    num_heads: NumHeads = None
    dropout: Dropout = None
    attention_dropout: AttentionDropout = None
    max_len: MaxLen = None

    def settings(self) -> dict[str, Any]:
        """The model settings given (None: not given)."""
        return model_settings(**vars(self))


@dataclass(frozen=True)
class TrainingOptions:
    """The options of every training command, in the order `--help` lists them (an option
    group: see `lossbench.cli.groups`); None: not given."""

    batch_size: BatchSize = None
    lr: LearningRate = None
    beta2: Beta2 = None
    weight_decay: WeightDecay = None
    max_epochs: MaxEpochs = None
    patience: Patience = None
    time_limit: TimeLimit = None
    batching: Batching = None
    positions: Positions = None
    negatives: Negatives = None
    sampler: Sampler = None
    logq: Logq = None
    negatives_unseen: NegativesUnseen = None
    gbce_t: GbceT = None
    mask_prob: MaskProb = None
    softmax_chunk: SoftmaxChunk = None
    split: Split = None
    valid_quantile: ValidQuantile = None
    test_quantile: TestQuantile = None
    shuffle_train: ShuffleTrain = None
    hidden_size: HiddenSize = None
    num_layers: NumLayers = None
    num_heads: NumHeads = None
    dropout: Dropout = None
    attention_dropout: AttentionDropout = None
    max_len: MaxLen = None
    validation_metric: ValidationMetric = None
    ks: Ks = None
    keep_seen: KeepSeen = None
    seen_targets: SeenTargets = None
    eval_negatives: EvalNegatives = None
    eval_sampler: EvalSampler = None
    device: Device = None
    precision: Precision = None
    compile: Compile = None
    threads: Threads = None

    def settings(self, **own: Any) -> dict[str, Any]:
        """The TrainConfig override layer of these options and the command's own TrainConfig
        options (`own`: `preset`, `init`, ... as the command takes them)."""
        return training_overrides({**vars(self), **own})


@dataclass(frozen=True)
class CiOptions:
    """`compare`'s CI and tracking options (an option group); `sample_users` is a TrainConfig
    field, the others are the request's."""

    smoke: Smoke = False
    sample_users: SampleUsers = None
    expect: Expect = None
    allow_collapsed: AllowCollapsed = False
    memory_budget: MemoryBudget = None
    json_output: JsonOutput = False
    junit: Junit = None
    track: Track = None


@dataclass(frozen=True)
class TrainCiOptions:
    """`train`'s CI and tracking options (an option group)."""

    smoke: Smoke = False
    sample_users: SampleUsers = None
    json_output: JsonOutput = False
    track: Track = None


# Flags that become `model_settings` entries rather than top-level TrainConfig fields.
MODEL_FLAGS = ("hidden_size", "num_layers", "num_heads", "dropout", "attention_dropout", "max_len")


def training_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig override layer from training options by name (None: not given).

    Renames and parses where flag and field differ (`--keep-seen` -> `exclude_seen`, `--ks`
    text -> list) and groups the model flags. A name that is no TrainConfig field is a
    programming error.
    """
    from lossbench.training.config import TrainConfig

    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if name in MODEL_FLAGS:
            continue
        if name == "keep_seen":
            overrides["exclude_seen"] = None if value is None else not value
        elif name == "ks":
            overrides["ks"] = parse_ks(value)
        elif name in TrainConfig.model_fields:
            overrides[name] = value
        else:
            raise TypeError(f"flag {name!r} is not a TrainConfig field")
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
