"""Train a task adapter with scheduled unfreezing (paper Algorithm 1) — the one explicit training loop.

    python train.py --task xnli --schedule gu --k 800 --output-dir runs/xnli-gu-s1

Run directory (a contract other tools rely on): config.json (every resolved argument), log.jsonl (one
object per logged step: step, loss, lr, trainable, [dev], [fisher, fisher_avg]), schedule.json (unfreeze
events), best/ and final/ (task adapter + head), summary.json, checkpoint.pt (for --resume).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fun.checkpoint import atomic_torch_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from fun.data import collate, feature_length, to_device, training_batches
from fun.model import (AdapterModel, UsageError, count_parameters, freeze, load_encoder, save_task_adapter)
from fun.schedules import SCHEDULES, Selection, is_unfreeze_step, last_unfreeze_step, validate_order
from fun.tasks import TASKS, task_loss

RUN_FILES = ("config.json", "log.jsonl", "schedule.json", "summary.json", "checkpoint.pt", "best", "final")
RESUMABLE = {"resume", "overwrite", "save_every", "no_progress", "threads", "device"}  # may differ between a run and its resumption


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--task", default="xnli", help=f"one of: {', '.join(TASKS)}")
    g.add_argument("--model", default="bert-base-multilingual-cased", help="Hub id or local model directory")
    g.add_argument("--train-file", help="local training file (official format); default: the Hub dataset")
    g.add_argument("--dev-file", help="local English dev file for model selection; default: the Hub dataset")
    g.add_argument("--lang-adapter", help="source-language adapter (AdapterHub dir or id, or ours): "
                                          "DIR or en=DIR; stacked under the task adapter, frozen")
    g.add_argument("--output-dir", required=True, help="run directory")
    g = p.add_argument_group("language adapter training (--task mlm; SPEC §1.2)")
    g.add_argument("--lang", help="language of the --task mlm text (names the adapter), e.g. sw")
    g.add_argument("--lang-reduction-factor", type=int, default=2, help="language adapter: bottleneck = hidden // rf")
    g.add_argument("--lang-activation", default="relu", help="language adapter activation (a transformers ACT2FN name)")
    g.add_argument("--mlm-head", default="pretrained", choices=("pretrained", "new"),
                   help="pretrained: the checkpoint's MLM head, frozen; new: train a fresh one (models without)")
    g.add_argument("--mlm-probability", type=float, default=0.15, help="share of tokens masked (80/10/10)")
    g = p.add_argument_group("schedule (SPEC §3)")
    g.add_argument("--schedule", default="standard", help=f"one of: {', '.join(SCHEDULES)}")
    g.add_argument("--k", type=int, help="unfreeze interval k in steps (default: the paper's for task/model/schedule)")
    g.add_argument("--order", help="fixed unfreeze order for --schedule order, e.g. 10,1,0,3,9,6,8,2,5,7,4")
    g.add_argument("--unfreeze-per-step", type=int, default=1, help="m adapters per unfreeze step (paper fn. 12)")
    g.add_argument("--reduction-factor", type=int, default=16, help="task adapter: bottleneck = hidden // rf")
    g = p.add_argument_group("optimisation (paper Table 3 defaults per task)")
    g.add_argument("--epochs", type=float, help="training epochs (ignored with --max-steps)")
    g.add_argument("--max-steps", type=int, help="total optimizer steps N")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-schedule", choices=("constant", "linear"), help="no warmup; linear decays to 0 at N")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--max-length", type=int, help="max tokens per input")
    g.add_argument("--max-train-samples", type=int, help="seeded random subsample of the training set")
    g.add_argument("--max-dev-samples", type=int, help="seeded random subsample of the dev set")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--no-dropout", action="store_true", help="run encoder and head in eval mode (paper: dropout on)")
    g.add_argument("--group-by-length", action="store_true",
                   help="batch examples of similar length (less padding, faster; as HF Trainer's group_by_length)")
    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval-every", type=int, help="evaluate on the English dev set every N steps (default: each epoch)")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--save-every", type=int, default=500, help="write checkpoint.pt every N steps (0: only at the end)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir from checkpoint.pt")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    g = p.add_argument_group("Fisher information (SPEC §4)")
    g.add_argument("--fisher-every", type=int, default=0, help="log tr(F) every N steps (paper: 100; 50 for XCOPA)")
    g.add_argument("--fisher-log-batches", type=int, default=4, help="training batches per logged tr(F)")
    g.add_argument("--fisher-batches", type=int, default=40, help="training batches per FUN selection")
    g.add_argument("--fisher-batch-size", type=int, help="examples per tr(F) batch (default: --batch-size)")
    g.add_argument("--fisher-labels", default="sample", choices=("sample", "exact", "argmax", "true"))
    g.add_argument("--fisher-estimator", default="per-sample", choices=("per-sample", "batch"))
    g.add_argument("--fisher-chunk-size", type=int, help="vmap chunk size (bounds memory)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--bf16", action="store_true", help="CUDA autocast to bfloat16 (fp32 master weights)")
    g.add_argument("--fp16", action="store_true", help="CUDA autocast to float16 with loss scaling")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true")
    return p


def model_family(model: str) -> str:
    name = model.lower()
    return "xlmr" if "xlm" in name or "roberta" in name else "mdeberta" if "deberta" in name else "mbert"


def resolve(args: argparse.Namespace) -> dict:
    """Fill the task's paper defaults (SPEC §5) and validate; returns the config saved as config.json."""
    if args.task not in TASKS:
        raise UsageError(f"--task {args.task}: unknown task; choose one of {', '.join(TASKS)}")
    if args.schedule not in SCHEDULES:
        raise UsageError(f"--schedule {args.schedule}: unknown schedule; choose one of {', '.join(SCHEDULES)}")
    task = TASKS[args.task]
    d = task.defaults
    cfg = dict(vars(args))
    family, scheduled = model_family(args.model), args.schedule not in ("standard", "full")
    cfg["lr"] = args.lr or d.get("lr", family, scheduled)
    cfg["epochs"] = args.epochs or d.get("epochs", family, scheduled)
    cfg["batch_size"] = args.batch_size or d.batch_size
    cfg["max_length"] = args.max_length or d.max_length
    cfg["lr_schedule"] = args.lr_schedule or d.lr_schedule
    cfg["fisher_batch_size"] = args.fisher_batch_size or cfg["batch_size"]
    cfg["k"] = args.k if args.k is not None else d.get_k(family, args.schedule)
    for name in ("k", "batch_size", "max_length", "unfreeze_per_step", "eval_batch_size", "log_every",
                 "fisher_batches", "fisher_log_batches", "fisher_batch_size"):
        if cfg[name] is not None and cfg[name] <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {cfg[name]}: must be a positive integer")
    for name in ("max_steps", "eval_every", "max_train_samples", "max_dev_samples", "fisher_chunk_size"):
        if cfg[name] is not None and cfg[name] <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {cfg[name]}: must be a positive integer")
    if cfg["epochs"] <= 0 or cfg["lr"] <= 0:
        raise UsageError("--epochs and --lr must be positive")
    if args.order is not None and args.schedule != "order":
        raise UsageError("--order goes with --schedule order")
    if args.schedule == "order":
        if not args.order:
            raise UsageError("--schedule order needs --order, e.g. --order 10,1,0,3,9,6,8,2,5,7,4")
        try:
            cfg["order"] = [int(x) for x in args.order.split(",")]
        except ValueError:
            raise UsageError(f"--order {args.order}: expected comma-separated adapter indices") from None
    if args.bf16 and args.fp16:
        raise UsageError("--bf16 and --fp16 exclude each other")
    if (args.bf16 or args.fp16) and not str(args.device).startswith("cuda"):
        raise UsageError("--bf16/--fp16 autocast is for CUDA devices; on CPU train in float32")
    if args.fisher_every and not SCHEDULES[args.schedule].adapters:
        raise UsageError("--fisher-every measures task adapters; --schedule full has none")
    cfg["model_family"] = family
    return cfg


def prepare_output_dir(cfg: dict) -> Path:
    """Refuse to mix runs: a directory holding a different run needs --resume or --overwrite."""
    out = Path(cfg["output_dir"])
    if cfg["resume"] and cfg["overwrite"]:
        raise UsageError("--resume and --overwrite exclude each other")
    saved = out / "config.json"
    if cfg["resume"]:
        if not (out / "checkpoint.pt").exists():
            raise UsageError(f"--resume: no checkpoint.pt in {out}; start the run without --resume")
        old = json.loads(saved.read_text())
        diff = sorted(k for k in cfg if k not in RESUMABLE and old.get(k) != cfg[k])
        if diff:
            raise UsageError(f"--resume: flags differ from the run in {out} ({', '.join(diff)}); "
                             "resume with the same flags, or start a new --output-dir")
        return out
    if out.exists() and any(out.iterdir()):
        if not cfg["overwrite"]:
            what = "a run" if saved.exists() else "other files"
            raise UsageError(f"--output-dir {out} already holds {what}; pass --resume to continue it, "
                             "--overwrite to replace it, or choose another directory")
        if not saved.exists():
            raise UsageError(f"--overwrite: {out} does not hold a run (no config.json); refusing to delete its files")
        for name in RUN_FILES:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def lr_lambda(schedule: str, total_steps: int):
    """Constant, or linear decay to 0 at step N; no warmup (paper §4.3)."""
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: max(0.0, 1.0 - step / total_steps)


def set_trainable(model: AdapterModel, layers: set[int]) -> None:
    """The per-layer requires_grad mask: frozen adapters still run in the forward pass (SPEC §3)."""
    for i, adapter in enumerate(model.task_adapter.layers):
        for p in adapter.parameters():
            p.requires_grad_(i in layers)


def fisher_sample(num_examples: int, batch_size: int, num_batches: int, seed: int, step: int) -> list[list[int]]:
    """Training batches for tr(F), drawn with their own RNG so measuring never moves the training RNG."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [torch.randint(num_examples, (batch_size,), generator=g).tolist() for _ in range(num_batches)]


class Interrupt:
    """SIGINT/SIGTERM → finish the current step, write a checkpoint, exit 128+signal."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    from fun.presets import parse_args  # --preset NAME (paper configurations) under explicit flags; --list-presets
    try:
        args = parse_args(build_parser(), argv)
        if args is None:  # --list-presets printed the table
            return 0
        return train(resolve(args))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def train(cfg: dict) -> int:
    interrupt = Interrupt()
    task = TASKS[cfg["task"]]
    schedule = SCHEDULES[cfg["schedule"]]
    out = prepare_output_dir(cfg)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"]), random.seed(cfg["seed"]), np.random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    autocast_dtype = torch.bfloat16 if cfg["bf16"] else torch.float16 if cfg["fp16"] else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- model: frozen encoder + Stack(lang, task) + head ------------------------------------------------
    encoder, tokenizer = load_encoder(cfg["model"])
    hidden, num_layers = encoder.config.hidden_size, encoder.config.num_hidden_layers
    lang_adapter = None
    if cfg["lang_adapter"]:
        from fun.adapterhub import load_lang_adapter_arg
        lang_adapter = load_lang_adapter_arg(cfg["lang_adapter"], encoder)
    if schedule.adapters:
        freeze(encoder)
    model = task.build_model(encoder, cfg, lang_adapter, adapters=schedule.adapters)  # (--task mlm: its own)
    task_adapter, head = model.task_adapter, model.head
    if lang_adapter is not None:
        freeze(lang_adapter)
    if cfg["schedule"] == "order":
        try:
            validate_order(cfg["order"], num_layers)
        except ValueError as err:
            raise UsageError(str(err)) from None
    order = tuple(cfg["order"] or ())
    trainable = set(schedule.initial(num_layers, order)) if schedule.adapters else set()
    if schedule.adapters:
        set_trainable(model, trainable)
    model.to(device)
    # One AdamW over everything that will ever train, created once; frozen ones have grad=None and are
    # skipped (no Adam state, no weight decay) — re-creating it on unfreeze would reset Adam's moments.
    params = [p for p in head.parameters() if p.requires_grad]  # (--task mlm's pretrained MLM head stays frozen)
    params += list(task_adapter.parameters()) if task_adapter else list(encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    n_trainable, n_total = count_parameters(model)
    print(f"trainable params: {n_trainable:,} / {n_total:,} ({100 * n_trainable / n_total:.3f}%) at step 0; "
          f"ever trainable: {sum(p.numel() for p in params):,}")

    # --- data --------------------------------------------------------------------------------------------
    train_split = task.split("train", tokenizer, cfg["max_length"], cfg["train_file"],
                             max_examples=cfg["max_train_samples"], seed=cfg["seed"])
    dev_split = task.split("dev", tokenizer, cfg["max_length"], cfg["dev_file"],
                           max_examples=cfg["max_dev_samples"], seed=cfg["seed"])
    steps_per_epoch = len(train_split.features) // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_split.features)} training features < --batch-size {cfg['batch_size']}")
    total = cfg["max_steps"] or max(1, int(cfg["epochs"] * steps_per_epoch))
    eval_every = cfg["eval_every"] or steps_per_epoch
    k = cfg["k"]
    if schedule.select is not None:
        done = last_unfreeze_step(cfg["schedule"], k, num_layers, cfg["unfreeze_per_step"], order)
        if done > total:
            print(f"warning: --schedule {cfg['schedule']} with k={k} unfreezes its last adapter at step {done}, "
                  f"but the run has only {total} steps ({steps_per_epoch} steps/epoch); "
                  f"lower --k to at most {total // max(1, done // k)} or train longer", file=sys.stderr)
    cfg.update(total_steps=total, steps_per_epoch=steps_per_epoch, num_layers=num_layers,
               train_examples=len(train_split.examples), train_features=len(train_split.features))
    pad_id = tokenizer.pad_token_id

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg["lr_schedule"], total))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["fp16"])

    def fisher(step: int, num_batches: int) -> dict[int, float]:
        from fun.fisher import fisher_trace
        idx = fisher_sample(len(train_split.features), cfg["fisher_batch_size"], num_batches, cfg["seed"], step)
        batches = [collate([train_split.features[i] for i in b], pad_id) for b in idx]
        g = torch.Generator().manual_seed(cfg["seed"] * 7_919 + step)
        return fisher_trace(model, batches, labels=cfg["fisher_labels"], estimator=cfg["fisher_estimator"],
                            generator=g, chunk_size=cfg["fisher_chunk_size"], device=device,
                            autocast_dtype=autocast_dtype)

    # --- state (restored on --resume) --------------------------------------------------------------------
    state = dict(step=0, epoch=0, batch=0, events=[], best=None, loss_sum=0.0, loss_count=0, elapsed=0.0)
    if cfg["resume"]:
        ckpt = load_checkpoint(out / "checkpoint.pt")
        state = ckpt["state"]
        trainable = set(ckpt["trainable"])
        if schedule.adapters:
            set_trainable(model, trainable)
            task_adapter.load_state_dict(ckpt["task_adapter"])
        else:
            encoder.load_state_dict(ckpt["encoder"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        for name, size in ckpt["log_sizes"].items():  # drop lines written after the checkpoint
            with open(out / name, "r+b") as f:
                f.truncate(size)
        print(f"resumed from step {state['step']}")
    else:
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2))
        (out / "log.jsonl").write_text("")
        atomic_write_text(out / "schedule.json", json.dumps([]))

    def save_checkpoint() -> None:
        (out / "log.jsonl").open("a").close()
        atomic_torch_save(dict(
            state=state, trainable=sorted(trainable), head=head.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=rng_state(),
            log_sizes={"log.jsonl": (out / "log.jsonl").stat().st_size},
            **({"task_adapter": task_adapter.state_dict()} if task_adapter else {"encoder": encoder.state_dict()}),
        ), out / "checkpoint.pt")

    meta = dict(task=cfg["task"], model=cfg["model"], schedule=cfg["schedule"], seed=cfg["seed"],
                hidden_size=hidden, num_layers=num_layers, max_length=cfg["max_length"],
                lang_adapter=cfg["lang_adapter"], lang=cfg["lang"])
    log = open(out / "log.jsonl", "a")
    model.train(not cfg["no_dropout"])
    lengths = [feature_length(f) for f in train_split.features]
    batches = training_batches(lengths, cfg["batch_size"], cfg["seed"], state["epoch"], state["batch"],
                               cfg["group_by_length"])
    bar = tqdm(total=total, initial=state["step"], desc=f"{cfg['task']} {cfg['schedule']}",
               disable=cfg["no_progress"], dynamic_ncols=True)
    started = time.time() - state["elapsed"]

    while state["step"] < total:
        step = state["step"] + 1
        record: dict = {}
        # Algorithm 1, lines 7-9: grow the trainable set S at i = k, 2k, ... (i <= kL)
        frozen = tuple(sorted(set(range(num_layers)) - trainable)) if schedule.adapters else ()
        if schedule.select is not None and frozen and is_unfreeze_step(step, k, num_layers):
            scores = fisher(step, cfg["fisher_batches"]) if schedule.needs_fisher else None
            chosen = schedule.select(Selection(frozen, step, cfg["unfreeze_per_step"], cfg["seed"], order, scores))
            trainable |= set(chosen)
            set_trainable(model, trainable)
            event = {"step": step, "layers": sorted(chosen)}
            if scores is not None:
                event["fisher"] = {str(j): v for j, v in sorted(scores.items())}
            state["events"].append(event)
            atomic_write_text(out / "schedule.json", json.dumps(state["events"], indent=1))
            record["unfrozen"] = sorted(chosen)

        epoch, position, idx = next(batches)
        state["epoch"], state["batch"] = epoch, position + 1  # where a resumed run continues
        batch = collate([train_split.features[i] for i in idx], pad_id)
        batch = task.train_batch(batch, tokenizer, cfg["seed"], step)  # (MLM: masks it)
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch)  # (B, H, K)
        loss = task_loss(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise UsageError(f"loss is {loss.item()} at step {step}; stopped. The last good checkpoint is "
                             f"{out / 'checkpoint.pt'} (--resume continues from it); try a lower --lr")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        lr = scheduler.get_last_lr()[0]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step
        state["loss_sum"] += loss.item()
        state["loss_count"] += 1
        bar.update(1)

        if cfg["fisher_every"] and step % cfg["fisher_every"] == 0:
            values = fisher(step, cfg["fisher_log_batches"])
            record["fisher"] = {str(j): v for j, v in sorted(values.items())}
            record["fisher_avg"] = float(np.mean([values[j] for j in sorted(trainable)])) if trainable else 0.0
        if step % eval_every == 0 or step == total:
            metrics = task.evaluate(model, dev_split, cfg["eval_batch_size"], pad_id, device, autocast_dtype)
            model.train(not cfg["no_dropout"])
            record["dev"] = metrics
            value = metrics[task.metric]
            if state["best"] is None or value > state["best"]["value"]:
                state["best"] = {"step": step, "value": value, "metrics": metrics}
                save_task_adapter(model, out / "best", dict(meta, step=step, dev=metrics))
                task.export(model, out / "best", cfg)  # (MLM: the language adapter in AdapterHub's layout too)
            bar.set_postfix({task.metric: f"{value:.2f}"})
        if record or step % cfg["log_every"] == 0 or step == total:
            record = dict(step=step, epoch=epoch, loss=state["loss_sum"] / state["loss_count"], lr=lr,
                          trainable=sorted(trainable), **record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            state["loss_sum"], state["loss_count"] = 0.0, 0
        state["elapsed"] = time.time() - started
        if (cfg["save_every"] and step % cfg["save_every"] == 0) or interrupt.signum:
            save_checkpoint()
        if interrupt.signum:
            bar.close()
            print(f"interrupted by signal {interrupt.signum} after step {step}; checkpoint written, "
                  f"continue with --resume", file=sys.stderr)
            return 128 + interrupt.signum

    bar.close()
    log.close()
    save_task_adapter(model, out / "final", dict(meta, step=state["step"]))
    task.export(model, out / "final", cfg)
    save_checkpoint()
    summary = dict(steps=state["step"], best=state["best"], events=state["events"],
                   train_seconds=round(state["elapsed"], 1))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    best = state["best"]
    print(f"done: {state['step']} steps in {state['elapsed']:.0f}s; best English dev {task.metric} "
          f"{best['value']:.2f} at step {best['step']} → {out / 'best'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
