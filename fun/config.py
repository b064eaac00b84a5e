"""Every setting of a training run in one dataclass, with the paper's defaults resolved in one place.

`TrainConfig` holds what `train.py` accepts (its flags are generated from these fields: `batch_size` is
`--batch-size`) and what `config.json` records. Fields left at None take the paper's value for the task, the
model family and the schedule in `resolve` (paper Table 3, kept per task in `fun/tasks/`); `check` refuses
settings that cannot work together, naming the field at fault (`ConfigError.field`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fun.hub import model_family
from fun.lora import TARGETS as LORA_TARGETS
from fun.mlm import MLM_DEFAULTS
from fun.schedules import SCHEDULES, validate_order
from fun.tasks import TASK_NAMES as TASK_ADAPTER_TASKS, SettingError, build_task

TASK_NAMES = (*TASK_ADAPTER_TASKS, "mlm")  # mlm: train a language adapter (fun/mlm.py)


class ConfigError(ValueError):
    """A setting that cannot work; `field` names it (train.py reports it as that field's flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def option(default, help: str, group: str | None = None, **cli):
    """A field with its one-line doc; `group` opens a section of `--help`, `cli` adds argparse settings."""
    return field(default=default, metadata=dict(help=help, group=group, **cli))


@dataclass
class TrainConfig:
    task: str = option("xnli", "task to train: " + ", ".join(TASK_NAMES), group="what to train", choices=TASK_NAMES)
    model: str = option("google-bert/bert-base-multilingual-cased", "encoder: Hub id or local model directory")
    train_file: str | None = option(None, "local training file in the official format (default: the Hub dataset)")
    dev_file: str | None = option(None, "local English dev file for model selection (default: the Hub dataset)")
    lang_adapter: str | None = option(None, "source-language adapter stacked under the task adapter, frozen: "
                                            "AdapterHub directory or Hub id, or a --task mlm run's best/ (DIR or en=DIR)")
    output_dir: str | None = option(None, "run directory", required=True)
    preset: str | None = option(None, "start from a paper configuration (python train.py --list-presets); "
                                      "flags given explicitly override its values")

    text_columns: list[str] | None = option(None, "one text column, or two for sentence pairs, e.g. sentence1,sentence2",
                                            group="your own task (--task classify; see the README)", parse="str_list")
    label_column: str | None = option(None, "label column (default: label); labels are strings or integers")
    labels: list[str] | None = option(None, "the labels in class-id order, e.g. no,yes (default: the sorted training "
                                            "labels); with names, an integer label is a position in this list",
                                      parse="str_list")
    id_column: str | None = option(None, "column of example ids for the predictions files (default: id; else the "
                                         "line or row)")
    languages: list[str] | None = option(None, "target languages evaluate.py tests (default: those of the files in "
                                               "its --test-dir)", parse="str_list")
    file_pattern: str | None = option(None, "names of per-language files in evaluate.py's --test-dir, with {lang} "
                                            "and {split} (dev/test); default: {split}-{lang}.tsv, .csv or .jsonl")
    dataset: str | None = option(None, "Hugging Face Hub dataset instead of local files, a namespaced id "
                                       "(owner/name), e.g. google-research-datasets/paws-x")
    dataset_config: str | None = option(None, "its config, {lang} for the language, e.g. '{lang}'")
    dataset_revision: str | None = option(None, "its revision (refs/convert/parquet: the Hub's Parquet conversion of "
                                                "a script-only dataset)")
    dataset_train_split: str | None = option(None, "its English training split (default: train)")
    dataset_dev_split: str | None = option(None, "its English dev split, for model selection (default: validation)")
    dataset_test_split: str | None = option(None, "its test split per language (default: test; {lang} allowed)")

    lang: str | None = option(None, "language of the --task mlm text (names the adapter), e.g. sw",
                              group="language adapter training (--task mlm; paper App. B)")
    lang_reduction_factor: int = option(2, "language adapter: bottleneck = hidden // rf", positive=True)
    lang_activation: str = option("relu", "language adapter activation (a transformers ACT2FN name)")
    mlm_head: str = option("pretrained", "pretrained: the checkpoint's MLM head, frozen; new: train a fresh one "
                                         "(encoders without one); DIR: the head of an --mlm-train head run "
                                         "(its best/), frozen and shared by every language's adapter")
    mlm_train: str = option("adapter", "adapter: a language adapter (with --mlm-head new, a head too); head: only a "
                                       "new MLM head on the frozen encoder, no adapter (text of many languages: "
                                       "--train-file a.txt,b.txt)", choices=("adapter", "head"))
    mlm_probability: float = option(0.15, "share of tokens masked (80% mask / 10% random / 10% kept)")

    schedule: str = option("standard", "unfreezing schedule: " + ", ".join(SCHEDULES),
                           group="schedule (paper Algorithm 1)", choices=tuple(SCHEDULES))
    k: int | None = option(None, "unfreeze interval k in steps (default: the paper's for task, model, schedule)",
                           positive=True)
    order: list[int] | None = option(None, "fixed unfreeze order for --schedule order, e.g. 10,1,0,3,9,6,8,2,5,7,4",
                                     parse="int_list")
    unfreeze_per_step: int = option(1, "m adapters per unfreeze step (paper footnote 12)", positive=True)
    reduction_factor: int = option(16, "task adapter: bottleneck = hidden // rf", positive=True)
    adapter: str = option("bottleneck", "task adapter: bottleneck (MAD-X, paper §3.1) or lora (PEFT's LoRA)",
                          choices=("bottleneck", "lora"))
    lora_rank: int = option(8, "LoRA rank r", positive=True)
    lora_alpha: float = option(8.0, "LoRA alpha: the update is scaled by alpha / r")
    lora_dropout: float = option(0.0, "dropout on the input of LoRA, in training")
    lora_targets: str = option("query,value", "comma-separated Linear layers LoRA adapts in every Transformer layer: "
                                              + ", ".join(LORA_TARGETS))

    epochs: float | None = option(None, "training epochs, ignored with --max-steps (default: paper Table 3)",
                                  group="optimisation (paper Table 3 defaults per task, model and schedule)")
    max_steps: int | None = option(None, "total optimizer steps N (default: epochs x steps per epoch)", positive=True)
    batch_size: int | None = option(None, "examples per step", positive=True)
    lr: float | None = option(None, "AdamW learning rate")
    lr_schedule: str | None = option(None, "no warmup; linear decays to 0 at step N", choices=("constant", "linear"))
    weight_decay: float = option(0.0, "AdamW weight decay (frozen adapters get none: they have no gradient)")
    max_grad_norm: float = option(1.0, "gradient clipping")
    max_length: int | None = option(None, "max tokens per input (QA: window length)", positive=True)
    max_train_samples: int | None = option(None, "seeded random subsample of the training set (paper Table 1)",
                                           positive=True)
    max_dev_samples: int | None = option(None, "seeded random subsample of the dev set", positive=True)
    seed: int = option(1, "seed of everything random: data order, init, dropout, rand, tr(F) samples")
    no_dropout: bool = option(False, "run encoder and head in eval mode (paper: dropout on)")
    group_by_length: bool = option(False, "batch examples of similar length: less padding, faster "
                                          "(Hugging Face Trainer's group_by_length)")

    eval_every: int | None = option(None, "evaluate on the English dev set every N steps (default: each epoch)",
                                    group="evaluation, logging, checkpoints", positive=True)
    eval_batch_size: int = option(64, "examples per evaluation batch", positive=True)
    log_every: int = option(10, "write a log.jsonl line every N steps", positive=True)
    save_every: int = option(500, "write checkpoint.pt every N steps (0: only at the end)")
    resume: bool = option(False, "continue the run in --output-dir from checkpoint.pt")
    overwrite: bool = option(False, "replace a run already in --output-dir")

    fisher_every: int = option(0, "log tr(F) every N steps (paper: 100; 50 for XCOPA)",
                               group="Fisher information (paper Eq. 1)")
    fisher_log_batches: int = option(4, "training batches per logged tr(F)", positive=True)
    fisher_batches: int = option(40, "training batches per FUN selection (paper: 40)", positive=True)
    fisher_batch_size: int | None = option(None, "examples per tr(F) batch (default: --batch-size)", positive=True)
    fisher_labels: str = option("sample", "y in log p(y|x): sampled (Eq. 1), closed-form expectation, argmax "
                                          "(released code), gold (empirical Fisher)",
                                choices=("sample", "exact", "argmax", "true"))
    fisher_estimator: str = option("per-sample", "per-sample (Eq. 1) or batch (Algorithm 2 as released)",
                                   choices=("per-sample", "batch"))
    fisher_chunk_size: int | None = option(None, "examples per vmap chunk (bounds memory)", positive=True)

    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when the machine that runs it has one)",
                                group="hardware")
    bf16: bool = option(False, "autocast to bfloat16, fp32 master weights (CUDA; on CPU too, fast only where the CPU "
                               "has bfloat16 units)")
    fp16: bool = option(False, "autocast to float16 with loss scaling (CUDA; on CPU it runs, slowly)")
    deterministic: bool = option(False, "deterministic CUDA kernels, so a rerun on the same GPU and software repeats "
                                        "bit for bit; slower (CPU runs repeat without it)")
    threads: int | None = option(None, "torch CPU threads", positive=True)
    no_progress: bool = option(False, "no progress bar")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that may differ between a run and its resumption: they do not change what is computed (model_dir: the
# absolute path of a local --model, which moves with the files).
RESUMABLE = frozenset({"resume", "overwrite", "save_every", "no_progress", "threads", "device", "output_dir",
                       "model_dir"})
# The settings a classification task of your own is built from (fun.tasks.build_task): saved with its adapter.
TASK_SETTINGS = ("text_columns", "label_column", "labels", "id_column", "languages", "file_pattern", "dataset",
                 "dataset_config", "dataset_revision", "dataset_train_split", "dataset_dev_split", "dataset_test_split")


def resolve(cfg: TrainConfig, cuda_available: bool = False) -> TrainConfig:
    """`cfg` with every None filled in: paper Table 3 for the task, model family and schedule; then `check`ed.
    Nothing here depends on the machine but the default --device: a sweep checks its runs where it writes them."""
    if cfg.task not in TASK_NAMES:
        raise ConfigError("task", f"unknown task; choose one of {', '.join(TASK_NAMES)}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError("schedule", f"unknown schedule; choose one of {', '.join(SCHEDULES)}")
    try:
        defaults = MLM_DEFAULTS if cfg.task == "mlm" else build_task(cfg.task, cfg.to_dict()).defaults
    except SettingError as err:
        raise ConfigError(err.field, str(err)) from None
    try:
        family = model_family(cfg.model)
    except OSError as err:
        raise ConfigError("model", str(err)) from None
    scheduled = cfg.schedule not in ("standard", "full")
    batch_size = cfg.batch_size or defaults.batch_size
    cfg = dataclasses.replace(
        cfg, lr=cfg.lr or defaults.get("lr", family, scheduled),
        epochs=cfg.epochs or defaults.get("epochs", family, scheduled), batch_size=batch_size,
        max_length=cfg.max_length or defaults.max_length, lr_schedule=cfg.lr_schedule or defaults.lr_schedule,
        fisher_batch_size=cfg.fisher_batch_size or batch_size,
        k=cfg.k if cfg.k is not None else defaults.get_k(family, cfg.schedule),
        device=cfg.device or ("cuda" if cuda_available else "cpu"))
    if cfg.fp16 and family == "mdeberta":
        raise ConfigError("fp16", f"{cfg.model} is a DeBERTa-v2 model, known to overflow in float16 "
                                  "(microsoft/DeBERTa#77); train it with --bf16, or in float32")
    check(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    """Refuse combinations that cannot work (ConfigError naming the field to change)."""
    if cfg.epochs <= 0:
        raise ConfigError("epochs", "must be positive")
    if cfg.lr <= 0:
        raise ConfigError("lr", "must be positive")
    if cfg.save_every < 0:
        raise ConfigError("save_every", "must be 0 (only at the end) or positive")
    if cfg.fisher_every < 0:
        raise ConfigError("fisher_every", "must be 0 (off) or positive")
    if cfg.order is not None and cfg.schedule != "order":
        raise ConfigError("order", "only the order schedule takes an order")
    if cfg.schedule == "order":
        if not cfg.order:
            raise ConfigError("order", "the order schedule needs an order of adapters, e.g. 10,1,0,3,9,6,8,2,5,7,4")
        try:
            validate_order(cfg.order)  # against the layer count once the model is loaded
        except ValueError as err:
            raise ConfigError("order", str(err)) from None
    if cfg.bf16 and cfg.fp16:
        raise ConfigError("fp16", "bf16 and fp16 autocast exclude each other")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("overwrite", "resuming a run and overwriting it exclude each other")
    if cfg.fisher_every and not SCHEDULES[cfg.schedule].adapters:
        raise ConfigError("fisher_every", "tr(F) measures task adapters, and full fine-tuning has none")
    if cfg.task != "mlm" and cfg.mlm_train != "adapter":
        raise ConfigError("mlm_train", "is for --task mlm")
    if cfg.adapter == "lora":
        if cfg.task == "mlm" or not SCHEDULES[cfg.schedule].adapters:
            raise ConfigError("adapter", "LoRA is a task adapter: --task mlm trains a bottleneck language adapter, "
                                         "and full fine-tuning has no adapter")
        if not set(cfg.lora_targets.split(",")) <= set(LORA_TARGETS):
            raise ConfigError("lora_targets", f"choose among {', '.join(LORA_TARGETS)}, comma-separated")
        if not 0.0 <= cfg.lora_dropout < 1.0 or cfg.lora_alpha <= 0:
            raise ConfigError("lora_alpha" if cfg.lora_alpha <= 0 else "lora_dropout",
                              "alpha must be positive, and dropout in [0, 1)")
    if cfg.task != "mlm":
        try:
            build_task(cfg.task, cfg.to_dict()).check_training(cfg.to_dict())
        except SettingError as err:
            raise ConfigError(err.field, str(err)) from None
    if cfg.task == "mlm":
        if not cfg.lang and cfg.mlm_train == "adapter":
            raise ConfigError("lang", "training a language adapter needs the language code of its text (it names "
                                      "the adapter), e.g. sw")
        if cfg.mlm_train == "head" and cfg.mlm_head != "new":
            raise ConfigError("mlm_head", "--mlm-train head fits a new MLM head: pass --mlm-head new")
        if cfg.schedule != "standard" or cfg.fisher_every:
            field = "schedule" if cfg.schedule != "standard" else "fisher_every"
            raise ConfigError(field, "a language adapter trains whole (schedule standard); schedules, full "
                                     "fine-tuning and tr(F) are for task adapters")
        if cfg.lang_adapter:
            raise ConfigError("lang_adapter", "a language adapter is trained on its own, not stacked on another")
        if not 0.0 < cfg.mlm_probability < 1.0:
            raise ConfigError("mlm_probability", "must be between 0 and 1")
