"""Named presets for every configuration in the paper: `python train.py --preset xnli-mbert-gu --seed 1`.

A preset is the settings (fun/config.py `TrainConfig` fields → values) of one paper configuration, named
task-model-schedule[-size][-lora]. train.py starts from them, flags given on the command line override them, and
config.json records the resolved run (and the preset's name).

Sources: paper Table 3 for the main runs — read from the tasks' `Defaults` (fun/tasks/*), where
Table 3 lives once; Table 4 and appendix F.2 for reduced data (1k/5k/10k examples); appendix F.1 for
reverse GU; appendix F.3 for mDeBERTa (no hyperparameters given: mBERT's, as the tasks' defaults say).
`*-lora` (standard, gu, fun) trains a task LoRA instead of the bottleneck adapter, with Table 3's values otherwise;
not in the paper.
`full` (full fine-tuning, the baseline of Fig. 2 / Table 7) has no hyperparameters in the paper; ours are
the usual BERT fine-tuning recipe and are marked so in the listing.

XQuAD and MLQA train the same model on SQuAD: `xquad-*` and `mlqa-*` presets differ only in --task (which
test set evaluate.py uses by default). A sweep that asks for both trains one run and evaluates it on both.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from fun.hub import LANG_ADAPTERS, MODELS
from fun.tasks import TASKS

TRAIN_DATA = {"xnli": "MultiNLI", "xcopa": "COPA", "xquad": "SQuAD", "mlqa": "SQuAD"}
SCHEDULED_MAIN = ("lpft", "gu", "rand", "fun")          # Table 2 (+Rand, +GU, +FUN) and Fig. 2 (+LPFT)
SIZES = {"1k": 1000, "5k": 5000, "10k": 10000}          # Table 1 / 12: random training subsamples

# paper Table 4: (epochs, lr, batch) with reduced training data (no XCOPA: COPA has only 400 examples)
REDUCED = {"xquad": (20, 5e-4, 32), "xnli": (50, 5e-4, 128)}
# k for 1k / 5k / 10k examples: GU from Table 4, FUN from appendix F.2 (which differ for mBERT XNLI)
REDUCED_K = {
    ("xquad", "mbert", "gu"): (10, 50, 50), ("xquad", "xlmr", "gu"): (10, 50, 50),
    ("xnli", "mbert", "gu"): (1, 25, 25), ("xnli", "xlmr", "gu"): (1, 25, 10),
    ("xquad", "mbert", "fun"): (10, 50, 50), ("xquad", "xlmr", "fun"): (10, 50, 25),
    ("xnli", "mbert", "fun"): (10, 50, 25), ("xnli", "xlmr", "fun"): (1, 25, 10),
}
# Full fine-tuning: not in the paper (Table 7 gives results only). Ours: BERT's recipe (Devlin et al. 2019,
# lr in {2,3,5}e-5, batch 32, 2-4 epochs, linear decay); COPA: small lr, constant like the adapter runs.
FULL = {"xnli": dict(epochs=2, lr=2e-5, batch_size=32, lr_schedule="linear"),
        "xquad": dict(epochs=2, lr=3e-5, batch_size=32, lr_schedule="linear"),
        "xcopa": dict(epochs=10, lr=1e-5, batch_size=16, lr_schedule="constant")}
FULL["mlqa"] = FULL["xquad"]

# LoRA instead of the bottleneck task adapter, on query and value: r = 24 gives 36,864·r ≈ 885k parameters on a
# 768-wide 12-layer encoder, the rf-16 adapter's 895k (in general r ≈ hidden / (2·rf)); alpha = r, so alpha / r = 1
LORA = dict(adapter="lora", lora_rank=24, lora_alpha=24.0, lora_targets="query,value")
LORA_SOURCE = "Table 3; ours: LoRA r=24 (≈ the adapter's size)"


@dataclass(frozen=True)
class Preset:
    name: str
    flags: dict          # train.py argparse dest → value
    source: str          # where in the paper the values come from

    @property
    def training(self) -> tuple:
        """What trains: equal for xquad-X and mlqa-X (both SQuAD), so a sweep runs them once."""
        flags = dict(self.flags, task="xquad" if self.flags["task"] == "mlqa" else self.flags["task"])
        return tuple(sorted(flags.items()))


def _adapter_preset(task: str, model: str, schedule: str, source: str, **override) -> Preset:
    """Table 3 values for (task, model, schedule) from the task's Defaults, then `override` (Table 4)."""
    d = TASKS[task].defaults
    scheduled = schedule != "standard"
    flags = dict(task=task, model=MODELS[model], schedule=schedule, epochs=d.get("epochs", model, scheduled),
                 lr=d.get("lr", model, scheduled), batch_size=d.batch_size, lr_schedule=d.lr_schedule,
                 fisher_every=d.fisher_every)
    if "en" in LANG_ADAPTERS[model]:  # MAD-X: the task adapter on the English language adapter (paper §3.1)
        flags["lang_adapter"] = LANG_ADAPTERS[model]["en"]
    if scheduled:
        flags["k"] = d.get_k(model, schedule)
    flags.update(override)
    size = next((s for s, n in SIZES.items() if n == flags.get("max_train_samples")), None)
    lora = ["lora"] if flags.get("adapter") == "lora" else []
    return Preset("-".join([task, model, schedule] + ([size] if size else []) + lora), flags, source)


def _build() -> dict[str, Preset]:
    presets = []
    for task in ("xnli", "xcopa", "xquad", "mlqa"):
        for model in ("mbert", "xlmr"):
            for schedule in ("standard", *SCHEDULED_MAIN):
                presets.append(_adapter_preset(task, model, schedule, "Table 3"))
            if task != "xcopa":  # appendix F.1 ran reverse GU on MLQA, XQuAD and XNLI
                presets.append(_adapter_preset(task, model, "gu-rev", "Table 3, App. F.1 (k of GU)"))
            for schedule in ("standard", "gu", "fun"):  # the same with a task LoRA (not in the paper)
                presets.append(_adapter_preset(task, model, schedule, LORA_SOURCE, **LORA))
            presets.append(Preset(f"{task}-{model}-full", dict(task=task, model=MODELS[model], schedule="full",
                                                               **FULL[task]), "ours (Table 7 has no hparams)"))
        for schedule in ("standard", "gu"):
            presets.append(_adapter_preset(task, "mdeberta", schedule, "App. F.3 (mBERT's values)"))
    for (task, model, schedule), ks in REDUCED_K.items():
        epochs, lr, batch = REDUCED[task]
        for (size, n), k in zip(SIZES.items(), ks):
            common = dict(epochs=epochs, lr=lr, batch_size=batch, max_train_samples=n)
            source = "Table 4" if schedule == "gu" else "Table 4, App. F.2"
            presets.append(_adapter_preset(task, model, schedule, source, k=k, **common))
            if schedule == "gu":  # the standard baseline of Table 1 has no k
                presets.append(_adapter_preset(task, model, "standard", "Table 4", **common))
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build()


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see python train.py --list-presets"
        raise ValueError(f"{name}: unknown preset{hint}")
    return PRESETS[name]


def expand(patterns: str) -> list[str]:
    """Comma-separated names or shell patterns (`xnli-mbert-*`) → preset names, in the order given (a pattern's
    matches in the listing's order)."""
    names: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        if any(c in pattern for c in "*?["):
            matched = [n for n in PRESETS if fnmatch.fnmatchcase(n, pattern)]
        else:
            matched = [get_preset(pattern).name]
        if not matched:
            raise ValueError(f"{pattern}: matches no preset; see python train.py --list-presets")
        names += [n for n in matched if n not in names]
    return names


def format_table(presets=None) -> str:
    """The presets as a markdown table (what `train.py --list-presets` prints)."""
    rows = [("preset", "train data", "model", "schedule", "k", "lr", "epochs", "batch", "LR sched.", "tr(F) every",
             "train examples", "language adapter", "source")]
    for p in presets if presets is not None else PRESETS.values():
        f = p.flags
        lr = f"{f['lr']:.0e}".replace("e-0", "e-")  # 5e-4, as the paper writes it
        rows.append((p.name, TRAIN_DATA[f["task"]], f["model"], f["schedule"], str(f.get("k", "—")), lr,
                     f"{f['epochs']:g}", str(f["batch_size"]), f["lr_schedule"], str(f.get("fisher_every") or "—"),
                     f"{f['max_train_samples']:,}" if f.get("max_train_samples") else "all",
                     f.get("lang_adapter") or "—", p.source))
    return "\n".join("| " + " | ".join(r) + " |" for r in (rows[0], ["---"] * len(rows[0]), *rows[1:]))
