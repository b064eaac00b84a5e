"""Train a task adapter with scheduled unfreezing: paper Algorithm 1 as one explicit loop.

    python train.py --task xnli --schedule gu --output-dir runs/xnli-gu-s1
    python train.py --preset xnli-mbert-fun --seed 1 --output-dir runs/xnli-fun-s1      # a paper configuration
    python train.py --task mlm --lang sw --train-file sw.txt --output-dir runs/la-sw     # a MAD-X language adapter

Read `train` first: setup, then the loop of Algorithm 1 (SELECT → batch → forward → loss → backward → step → log),
then save; its comments carry the algorithm's line numbers. The helpers below it build the model and data and
measure tr(F); `train_language_adapter` is the MLM recipe for a missing language adapter (paper App. B). Every
setting and its default: fun/config.py (`--help` lists them).
The run directory (config.json, log.jsonl, schedule.json, best/, final/, summary.json, checkpoint.pt): fun/run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

import cli
from cli import UsageError, blame, flag
from fun import mlm
from fun.config import RESUMABLE, TASK_SETTINGS, TrainConfig, resolve
from fun.data import Split, collate, feature_length, to_device, training_batches
from fun.device import allow_tf32, get_device, set_deterministic
from fun.evaluation import evaluate
from fun.fisher import fisher_trace
from fun.hub import model_family
from fun.lora import LoraSet, save_peft
from fun.model import (AdapterModel, build_task_adapter, count_parameters, freeze, load_encoder, max_sequence_length,
                       model_dir, save_adapter)
from fun.run import ConfigMismatch, Progress, Run, RunExists
from fun.schedules import SCHEDULES, last_unfreeze_step, set_trainable, unfreeze, validate_order
from fun.tasks import Task, build_task, task_loss


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        cfg = parse_config(argv)
        if cfg is None:  # --list-presets printed the table
            return 0
        with cli.blame_config():
            cfg = resolve(cfg, cuda_available=torch.cuda.is_available())
        return train_language_adapter(cfg) if cfg.task == "mlm" else train(cfg)
    return cli.main(run)


def train(cfg: TrainConfig) -> int:
    """Algorithm 1: a task adapter on a frozen encoder, its layers unfrozen on `cfg.schedule`."""
    run = open_run(cfg)  # refuses to mix runs; SIGINT/SIGTERM → finish the step, checkpoint, exit
    device, autocast_dtype = setup(cfg)
    task, schedule = build_task(cfg.task, cfg.to_dict()), SCHEDULES[cfg.schedule]
    with blame(data_flag(cfg, "train")):  # what rebuilds the task: a classify run's label set comes from its data
        cfg = dataclasses.replace(cfg, **task.settings())
    model, tokenizer = build_model(cfg, task)  # line 3: initialise C and every θ_j (frozen encoder + Stack + head)
    train_split, dev_split = load_data(cfg, task, tokenizer)
    total, eval_every = plan_steps(cfg, train_split, model.num_layers)
    start_run(run, cfg, model, train_split, total)

    # One AdamW over everything that will ever train, created once: frozen parameters have no gradient and are
    # skipped (no update, no Adam state, no weight decay); re-creating it at an unfreeze would reset Adam's moments.
    params = [p for part in model.to(device).trained_parts().values() for p in part.parameters()]
    optimizer, scheduler, scaler = make_optimizer(cfg, params, total, device)
    run.track(device, **model.trained_parts(), optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    # line 4: S ← {C}. C always trains, so `trainable` holds S's adapters: most schedules start with one already
    # (the starting sets, and what that changes: fun/schedules.py)
    progress = restore(run) if cfg.resume else Progress(trainable=sorted(schedule.initial(model.num_layers, cfg.order or ())))
    trainable = set(progress.trainable)  # S without C, applied to the task adapters as a requires_grad mask
    set_trainable(model.task_layers, trainable)
    report_parameters(model, params, progress.step)

    batches = training_batches(lengths(train_split), cfg.batch_size, cfg.seed, progress.epoch, progress.batch,
                               cfg.group_by_length)
    fisher = partial(measure_fisher, model, train_split, cfg, device, autocast_dtype, tokenizer.pad_token_id)
    bar = tqdm(total=total, initial=progress.step, desc=f"{cfg.task} {cfg.schedule}", disable=cfg.no_progress)
    model.train(not cfg.no_dropout)
    while progress.step < total:  # line 5: for i = 1 ... N
        step, events = progress.step + 1, {}
        # lines 7-9: at i = k, 2k, ... (i <= kL) SELECT() adapters among the frozen ones and add them to S
        chosen, scores = unfreeze(schedule, step, cfg.k, trainable, model.num_layers, per_step=cfg.unfreeze_per_step,
                                  seed=cfg.seed, order=cfg.order or (), fisher=lambda: fisher(step, cfg.fisher_batches))
        if chosen:
            trainable |= set(chosen)
            set_trainable(model.task_layers, trainable)
            progress.trainable = sorted(trainable)
            run.unfrozen(progress, step, chosen, scores)
            events["unfrozen"] = chosen
        # line 6: sample a batch (after SELECT here: the data order does not depend on S, nor tr(F)'s batches on it)
        epoch, position, idx = next(batches)
        batch = to_device(collate([train_split.features[i] for i in idx], tokenizer.pad_token_id), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch)  # line 11: FORWARD, (B, H, K)
        loss = task_loss(logits, batch["labels"])
        # lines 12-14: update C and S's adapters; one host sync, after the update is queued
        lr, loss_value = update(loss, params, optimizer, scheduler, scaler, cfg.max_grad_norm)
        check_finite(loss_value, step, run)  # before anything of this step is saved
        progress.advance(step, epoch, position, loss_value)
        bar.update()
        # measure: tr(F) of every adapter (paper Fig. 3), English dev for model selection
        if cfg.fisher_every and step % cfg.fisher_every == 0:
            events.update(fisher_record(fisher(step, cfg.fisher_log_batches), trainable))
        if step % eval_every == 0 or step == total:
            events["dev"] = evaluate(model, task, dev_split, cfg.eval_batch_size, tokenizer.pad_token_id, device,
                                     autocast_dtype, progress=False)
            model.train(not cfg.no_dropout)
            if progress.improved(step, events["dev"][task.metric], events["dev"]):
                save(run, "best", model, cfg, step=step, dev=events["dev"])
            bar.set_postfix({task.metric: f"{events['dev'][task.metric]:.2f}"})
        if events or step % cfg.log_every == 0 or step == total:
            run.log(progress, dict(lr=lr, trainable=sorted(trainable), **events))
        if run.end_of_step(progress, cfg.save_every):
            return stopped(run, bar, step)
    return finish(run, bar, progress, model, cfg, task.metric)


# --- setup -------------------------------------------------------------------------------------------------------

def parse_config(argv: list[str] | None) -> TrainConfig | None:
    """The flags (generated from TrainConfig) over a --preset's values over the defaults; None after
    --list-presets printed the table."""
    from fun.presets import format_table, get_preset

    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--list-presets", action="store_true")
    if first.parse_known_args(argv)[0].list_presets:
        print(format_table())
        return None
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--list-presets", action="store_true", help="print the paper's configurations and exit")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "list_presets"}
    preset = {}
    if "preset" in given:
        with blame("--preset"):
            preset = get_preset(given["preset"]).flags
    return TrainConfig(**{**preset, **given})


def open_run(cfg: TrainConfig) -> Run:
    try:
        return Run(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    except RunExists as err:
        raise UsageError(f"--output-dir: {err}; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another directory") from None
    except FileNotFoundError as err:
        raise UsageError(f"--resume: {err}") from None


def setup(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """Device (checked here, where the run runs), threads, determinism, seeds, TF32; → (device, autocast dtype or
    None)."""
    with blame("--device"):
        device = get_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        set_deterministic()  # before the model reaches the GPU: cuBLAS reads its workspace setting on first use
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    allow_tf32(device.type == "cuda")  # for the training step; tr(F) and evaluation turn it off (fun/device.py)
    return device, torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else None


def load_model(cfg: TrainConfig):
    """(encoder, tokenizer), checked against --max-length."""
    with blame("--model"):
        encoder, tokenizer = load_encoder(cfg.model)
    limit = max_sequence_length(encoder.config)
    if limit is not None and cfg.max_length > limit:
        raise UsageError(f"--max-length {cfg.max_length}: {cfg.model} has position embeddings for at most {limit} "
                         f"tokens; pass --max-length {limit} or less")
    return encoder, tokenizer


def build_model(cfg: TrainConfig, task: Task) -> tuple[AdapterModel, object]:
    """Frozen encoder + Stack(language adapter, task adapter) + head (paper §3.1). Full fine-tuning: the
    encoder trains and there is no adapter."""
    encoder, tokenizer = load_model(cfg)
    if cfg.order:
        with blame("--order"):
            validate_order(cfg.order, encoder.config.num_hidden_layers)
    lang_adapter = None
    if cfg.lang_adapter:
        from fun.adapterhub import load_lang_adapter_arg
        with blame("--lang-adapter"):
            lang_adapter = load_lang_adapter_arg(cfg.lang_adapter, encoder)
        freeze(lang_adapter)
    d = encoder.config.hidden_size
    full = not SCHEDULES[cfg.schedule].adapters
    if not full:
        freeze(encoder)
    task_adapter = None if full else build_task_adapter(task_adapter_config(cfg, encoder.config))
    model = AdapterModel(encoder, task.make_head(d, encoder.config.hidden_dropout_prob), task_adapter, lang_adapter)
    return model, tokenizer


def task_adapter_config(cfg: TrainConfig, config) -> dict:
    """The task adapter `--adapter` names, sized for the encoder's `config` (fun.model.build_task_adapter builds it)."""
    size = dict(hidden_size=config.hidden_size, num_layers=config.num_hidden_layers)
    if cfg.adapter == "lora":
        return dict(size, adapter="lora", intermediate_size=config.intermediate_size, rank=cfg.lora_rank,
                    alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets.split(","))
    return dict(size, reduction_factor=cfg.reduction_factor)


def load_data(cfg: TrainConfig, task: Task, tokenizer) -> tuple[Split, Split]:
    """English training and dev splits: local files in the official format, or the Hub (fun/hub.py, or --dataset)."""
    with blame(data_flag(cfg, "train")):
        train_split = task.split("train", tokenizer, cfg.max_length, cfg.train_file,
                                 max_examples=cfg.max_train_samples, seed=cfg.seed)
    with blame(data_flag(cfg, "dev")):
        dev_split = task.split("dev", tokenizer, cfg.max_length, cfg.dev_file,
                               max_examples=cfg.max_dev_samples, seed=cfg.seed)
    return train_split, dev_split


def data_flag(cfg: TrainConfig, split: str) -> str:
    """The flag that chose the `split` data: --train-file / --dev-file, or --dataset (a Hub dataset of your own)."""
    return f"--{split}-file" if getattr(cfg, f"{split}_file") or not cfg.dataset else "--dataset"


def lengths(split: Split) -> list[int]:
    return [feature_length(f) for f in split.features]


def plan_steps(cfg: TrainConfig, train_split: Split, num_layers: int) -> tuple[int, int]:
    """(N total steps, evaluation interval); warns when the schedule cannot unfreeze everything within N."""
    steps_per_epoch = len(train_split.features) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {cfg.batch_size}: more than the {len(train_split.features)} training features")
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    done = last_unfreeze_step(cfg.schedule, cfg.k, num_layers, cfg.unfreeze_per_step, cfg.order or ())
    if done > total:
        print(f"warning: --schedule {cfg.schedule} with k={cfg.k} unfreezes its last adapter at step {done}, "
              f"but the run has only {total} steps ({steps_per_epoch} steps/epoch); "
              f"lower --k to at most {total // max(1, done // cfg.k)} or train longer", file=sys.stderr)
    return total, cfg.eval_every or steps_per_epoch


def start_run(run: Run, cfg: TrainConfig, model: AdapterModel, train_split: Split, total: int) -> None:
    """config.json: every setting and what follows from them (a resumed run must agree with it)."""
    config = dict(cfg.to_dict(), model_dir=model_dir(cfg.model), model_family=model_family(cfg.model), total_steps=total,
                  steps_per_epoch=len(train_split.features) // cfg.batch_size, num_layers=model.num_layers,
                  train_examples=len(train_split.examples), train_features=len(train_split.features))
    try:
        run.start(config, RESUMABLE)
    except ConfigMismatch as err:
        raise UsageError(f"--resume: flags differ from the run in {run.dir} ({', '.join(err.fields)}); resume with "
                         "the same flags, or start a new --output-dir") from None


def make_optimizer(cfg: TrainConfig, params: list, total: int, device: torch.device):
    """AdamW without warmup (paper App. B), the LR constant or decaying linearly to 0 at step N, and a loss scaler
    for fp16. With fp16 AdamW is the fused kernel: it reads the scaler's inf/NaN flag on the device, where the unfused
    one would read it on the host, a sync every step."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if cfg.fp16 else None)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=total)
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=cfg.fp16)


def restore(run: Run) -> Progress:
    with blame("--resume"):
        progress = run.restore()
    print(f"resumed from step {progress.step}")
    return progress


def report_parameters(model: torch.nn.Module, params: list, step: int) -> None:
    n_trainable, n_total = count_parameters(model)
    print(f"trainable params: {n_trainable:,} / {n_total:,} ({100 * n_trainable / n_total:.3f}%) at step {step}; "
          f"ever trainable: {sum(p.numel() for p in params):,}")


# --- inside the loop ------------------------------------------------------------------------------------------------

def update(loss: torch.Tensor, params: list, optimizer, scheduler, scaler, max_grad_norm: float) -> tuple[float, float]:
    """Backward, clip the gradient norm, AdamW step (fp16: through the loss scaler), all queued on the device; then the
    step's one host sync reads the loss and whether the loss scaler skipped the step (fp16: inf/NaN gradients). The
    LR schedule advances with the optimizer only. → (the step's learning rate, its loss)."""
    lr = scheduler.get_last_lr()[0]
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    skipped = found_inf(scaler, optimizer, loss.device)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    loss_value, skipped = torch.stack([loss.detach().float(), skipped]).tolist()  # waits for the step to finish
    if not skipped:
        scheduler.step()
    return lr, loss_value


def found_inf(scaler, optimizer, device: torch.device) -> torch.Tensor:
    """1. when the fp16 loss scaler found inf/NaN gradients (it skips the optimizer step), else 0., on the device.
    The scaler keeps what `unscale_` found per device; its public API reads it only on the host."""
    none = torch.zeros((), device=device)
    return sum(scaler._found_inf_per_device(optimizer).values(), none) if scaler.is_enabled() else none


def check_finite(loss: float, step: int, run: Run) -> None:
    """Stop on a non-finite loss. The step's update has run, but nothing of it is saved: the checkpoint and best/ on
    disk hold the last good state."""
    if not math.isfinite(loss):
        raise UsageError(f"loss is {loss} at step {step}; stopped. The last good checkpoint is "
                         f"{run.dir / 'checkpoint.pt'} (--resume continues from it); try a lower --lr")


def measure_fisher(model: AdapterModel, split: Split, cfg: TrainConfig, device: torch.device,
                   autocast_dtype: torch.dtype | None, pad_id: int, step: int, num_batches: int) -> dict[int, float]:
    """tr(F) per task adapter (fun/fisher.py) on `num_batches` training batches. The batches and the sampled labels
    come from generators seeded by (seed, step), never the training RNG, so measuring never changes training."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    picks = [torch.randint(len(split.features), (cfg.fisher_batch_size,), generator=g).tolist() for _ in range(num_batches)]
    batches = [collate([split.features[i] for i in b], pad_id) for b in picks]
    return fisher_trace(model, batches, labels=cfg.fisher_labels, estimator=cfg.fisher_estimator,
                        generator=torch.Generator().manual_seed(cfg.seed * 7_919 + step), chunk_size=cfg.fisher_chunk_size,
                        device=device, autocast_dtype=autocast_dtype)


def fisher_record(values: dict[int, float], trainable: set[int]) -> dict:
    """log.jsonl's `fisher` (every adapter) and `fisher_avg` (mean over the trainable ones, paper Fig. 3)."""
    average = float(np.mean([values[j] for j in sorted(trainable)])) if trainable else 0.0
    return {"fisher": {str(j): v for j, v in sorted(values.items())}, "fisher_avg": average}


def save(run: Run, name: str, model: AdapterModel, cfg: TrainConfig, **meta) -> None:
    """What the run trained → RUN/best or RUN/final (fun.model.save_adapter), with what rebuilding it needs."""
    parts = model.trained_parts()
    save_adapter(run.dir / name, parts, parts["task"].config if "task" in parts else None, dict(
        task=cfg.task, model=cfg.model, model_dir=model_dir(cfg.model), schedule=cfg.schedule, seed=cfg.seed,
        hidden_size=model.encoder.config.hidden_size, num_layers=model.num_layers, max_length=cfg.max_length,
        lang_adapter=cfg.lang_adapter, lang=cfg.lang, **{k: getattr(cfg, k) for k in TASK_SETTINGS}, **meta))
    if isinstance(parts.get("task"), LoraSet):  # and in PEFT's layout: RUN/best/peft loads with PeftModel.from_pretrained
        save_peft(parts["task"], model.encoder, run.dir / name / "peft", cfg.model)


def stopped(run: Run, bar, step: int) -> int:
    bar.close()
    print(f"interrupted by signal {run.signum} after step {step}; checkpoint written, continue with --resume",
          file=sys.stderr)
    return 128 + run.signum


def finish(run: Run, bar, progress: Progress, model: AdapterModel, cfg: TrainConfig, metric: str,
           export=None, dev: str = "English dev", **meta) -> int:
    bar.close()
    save(run, "final", model, cfg, step=progress.step, **meta)
    if export is not None:
        export(run.dir / "final")
    run.checkpoint(progress)
    run.finish(progress)
    best = progress.best
    print(f"done: {progress.step} steps in {run.elapsed(progress):.0f}s; best {dev} {metric} "
          f"{best['value']:.2f} at step {best['step']} → {run.dir / 'best'}")
    return 0


# --- language adapters ----------------------------------------------------------------------------------------------

def train_language_adapter(cfg: TrainConfig) -> int:
    """MLM training of a MAD-X language adapter (paper App. B; fun/mlm.py): the whole adapter trains from step 0,
    and best/ and final/ also hold it in AdapterHub's layout (adapterhub/). `--mlm-train head` fits only a new MLM
    head on the frozen encoder, the head that language adapters then share (`--mlm-head DIR`)."""
    from fun.adapterhub import save_adapterhub

    run = open_run(cfg)
    device, autocast_dtype = setup(cfg)
    encoder, tokenizer = load_model(cfg)
    adapter = cfg.mlm_train == "adapter"
    with blame(flag("mlm_head" if cfg.mlm_head != "new" else "lang_reduction_factor")):
        model = mlm.build_model(encoder, cfg.model, cfg.lang_reduction_factor, cfg.lang_activation, cfg.mlm_head,
                                adapter=adapter)
    with blame("--train-file"):
        train_docs, dev_docs = mlm.load_corpus(cfg.lang, cfg.train_file, cfg.dev_file)
        train_docs = mlm.subsample(train_docs, cfg.max_train_samples, cfg.seed)
        train_split = mlm.corpus_split(train_docs, tokenizer, cfg.max_length, False, cfg.lang, cfg.mlm_probability)
    with blame("--dev-file"):
        dev_docs = mlm.subsample(dev_docs, cfg.max_dev_samples, cfg.seed)
        dev_split = mlm.corpus_split(dev_docs, tokenizer, cfg.max_length, True, cfg.lang, cfg.mlm_probability)
    total, eval_every = plan_steps(cfg, train_split, model.num_layers)
    start_run(run, cfg, model, train_split, total)
    params = [p for p in model.to(device).parameters() if p.requires_grad]  # the adapter and/or a new head
    optimizer, scheduler, scaler = make_optimizer(cfg, params, total, device)
    run.track(device, **model.trained_parts(), optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    progress = restore(run) if cfg.resume else Progress(trainable=list(range(model.num_layers)) if adapter else [])
    report_parameters(model, params, progress.step)
    dev = partial(mlm.evaluate, split=dev_split, batch_size=cfg.eval_batch_size, pad_token_id=tokenizer.pad_token_id,
                  device=device, autocast_dtype=autocast_dtype)
    if progress.step == 0:  # where training starts, and (MAD-X's baseline) the frozen encoder + head alone
        run.log(progress, dict(dev=dev(model), **({"dev_without_adapter": without_adapter(model, dev)} if adapter else {})))

    def export(directory):  # beside our format, AdapterHub's: DIR/adapterhub/ loads with the `adapters` library
        if adapter:
            save_adapterhub(model.adapters.lang, directory / "adapterhub", cfg.lang, cfg.model, encoder.config.model_type)

    batches = training_batches(lengths(train_split), cfg.batch_size, cfg.seed, progress.epoch, progress.batch,
                               cfg.group_by_length)
    bar = tqdm(total=total, initial=progress.step, desc=f"mlm {cfg.lang or cfg.mlm_train}", disable=cfg.no_progress)
    model.train(not cfg.no_dropout)
    while progress.step < total:
        step, events = progress.step + 1, {}
        epoch, position, idx = next(batches)
        batch = collate([train_split.features[i] for i in idx], tokenizer.pad_token_id)
        batch = to_device(mlm.mask_batch(batch, tokenizer, cfg.mlm_probability, cfg.seed, step), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch)  # (B, M, V): the masked positions only
        loss = task_loss(logits, batch["labels"])
        lr, loss_value = update(loss, params, optimizer, scheduler, scaler, cfg.max_grad_norm)  # one host sync
        check_finite(loss_value, step, run)  # before anything of this step is saved
        progress.advance(step, epoch, position, loss_value)
        bar.update()
        if step % eval_every == 0 or step == total:
            events["dev"] = dev(model)
            model.train(not cfg.no_dropout)
            if progress.improved(step, events["dev"][mlm.METRIC], events["dev"]):
                save(run, "best", model, cfg, step=step, dev=events["dev"], mlm_head=mlm.head_config(model.head))
                export(run.dir / "best")
        if events or step % cfg.log_every == 0 or step == total:
            run.log(progress, dict(lr=lr, trainable=progress.trainable, **events))
        if run.end_of_step(progress, cfg.save_every):
            return stopped(run, bar, step)
    return finish(run, bar, progress, model, cfg, mlm.METRIC, export, dev="held-out", mlm_head=mlm.head_config(model.head))


def without_adapter(model: mlm.MLMModel, dev) -> dict:
    """Dev metrics of the frozen encoder + head with the language adapter taken out of the stack."""
    adapter, model.adapters.lang = model.adapters.lang, None
    try:
        return dev(model)
    finally:
        model.adapters.lang = adapter


if __name__ == "__main__":
    sys.exit(main())
