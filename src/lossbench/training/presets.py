"""Named hyperparameter presets from the study, and per-dataset training defaults.

A preset is a layer of overrides applied after the defaults and before a TOML file and CLI
flags; a dataset's defaults (`DATASET_SETTINGS`) come right after the preset, so `train` and
`compare` apply the same ones and a TOML file or a flag can still change them.

Top-level keys are `TrainConfig` fields; `model_settings` go to the model's own config,
then `PER_MODEL[model]` on top of them (a model the study's code built with its own
constants). Model settings that a model does not have (GRU4Rec has no attention heads) are
left out for it.
"""

from __future__ import annotations

from typing import Any

# The key of a preset's per-model model settings, applied over its `model_settings`.
PER_MODEL = "per_model"

PRESETS: dict[str, dict[str, Any]] = {
    # Table 2 (S3Rec code base): hidden 64, 2 layers, 2 heads, dropout 0.5, length 50,
    # Adam 1e-3 (0.9, 0.999), batch 256, up to 200 epochs, patience 10 on validation NDCG@20.
    # NDCG@20 matters: on LastFM, NDCG@10 peaks early (near popularity, epoch ~5) and dips
    # while the model leaves popularity, which stops training 10 epochs later.
    # Negatives are never items of the user's history, as in the S3Rec (and SASRec) code.
    "study-s3rec": {
        "validation_metric": "ndcg@20",
        "negatives_unseen": True,
        "batch_size": 256,
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "max_epochs": 200,
        "patience": 10,
        "model_settings": {
            "hidden_size": 64,
            "max_len": 50,
            "dropout": 0.5,
            "init_std": 0.02,
            "num_layers": 2,
            "num_heads": 2,
            "attention_dropout": 0.5,
        },
        # The study's GRU4Rec ignores the transformer settings above: its code fixes one GRU
        # layer with a state of 128 and no gate biases, projected by a linear layer back to
        # the item embeddings' 64 (embedding dropout 0.5, as above), with RecBole's init.
        PER_MODEL: {
            "gru4rec": {
                "num_layers": 1,
                "hidden_size": 128,
                "embedding_size": 64,
                "bias": False,
                "init": "xavier",
            },
        },
    },
    # Table 3 (aprec code base): SASRec embedding 50, 2 blocks, 1 head, dropout 0.2,
    # history 50, batch 128, Adam beta2 0.98.
    "study-aprec": {
        "batch_size": 128,
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.98,
        "max_epochs": 200,
        "patience": 10,
        "model_settings": {
            "hidden_size": 50,
            "max_len": 50,
            "dropout": 0.2,
            "num_layers": 2,
            "num_heads": 1,
            "attention_dropout": 0.2,
        },
    },
}

# `--smoke`: the study-s3rec protocol at toy scale, for CI (a 3-loss, 3-seed comparison on the
# synthetic data trains in seconds on 2 cores and still ranks improved > bce > ce, significantly).
# At most 1000 users (a fixed sample): a smoke run on a large real dataset stays short too.
PRESETS["smoke"] = {
    **PRESETS["study-s3rec"],
    "batch_size": 128,
    "eval_batch_size": 128,
    "max_epochs": 5,
    "patience": 5,
    "sample_users": 1000,
    "model_settings": {
        "hidden_size": 32,
        "max_len": 20,
        "dropout": 0.2,
        "init_std": 0.02,
        "num_layers": 1,
        "num_heads": 1,
        "attention_dropout": 0.2,
    },
    PER_MODEL: {},  # not the study's wide GRU either: every model at width 32
}
# What `--smoke` sets above the dataset defaults (`DATASET_SETTINGS` caps synthetic epochs).
SMOKE_LAYER: dict[str, Any] = {
    "preset": "smoke",
    **{name: PRESETS["smoke"][name] for name in ("max_epochs", "patience")},
}

DEFAULT_PRESET = "study-s3rec"

# The generated demo dataset converges in a few epochs: a short run keeps `make demo` to
# minutes on 2 CPU cores. Every run prints its epoch limit and patience in its header.
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "synthetic": {"max_epochs": 10, "patience": 3},
}
