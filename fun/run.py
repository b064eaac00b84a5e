"""The run directory and everything that makes a run resumable, kept out of the training loop.

A run directory is a contract other tools rely on (evaluate.py, fisher.py, experiments/):

    config.json     every setting, with the paper's defaults filled in, plus derived sizes (steps, L, ...)
    log.jsonl       one object per logged step: step, epoch, loss (mean since the last line), lr, trainable,
                    and when they happen: unfrozen, fisher + fisher_avg, dev
    schedule.json   the unfreeze events [{"step": 800, "layers": [10]}, ...] (FUN: + the tr(F) that decided)
    best/, final/   what the run trained (fun.model.save_adapter): best on the dev set, and the last step
    summary.json    steps, best step and metrics, unfreeze events, training seconds
    checkpoint.pt   what --resume needs
    results-*.json  written later by evaluate.py (`results_path`)

A checkpoint holds what the next step depends on: the trained weights, AdamW, LR-scheduler and loss-scaler state,
the progress (step, data position, trainable set, unfreeze events, best), the RNG states (Python, NumPy, torch's CPU
generator, and the training GPU's), and the size of log.jsonl, which a resumed run truncates back to, so no line is
written twice. It is tensors and plain data only and is read with `torch.load(weights_only=True)`: resuming a run
directory received from someone else runs no code from it. Checkpoints are written atomically (temp file, fsync,
rename). SIGINT / SIGTERM only set a flag: the loop finishes its step, writes a checkpoint and exits with
128 + signal. A run killed at any step and resumed ends bit-identical on CPU (on CUDA: with --deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RUN_FILES = ("config.json", "log.jsonl", "schedule.json", "summary.json", "checkpoint.pt", "best", "final")
SPLIT_NAMES = {"test": "test", "dev": "dev", "val": "dev"}  # evaluation split as given → the split's name


class RunExists(FileExistsError):
    """The output directory already holds a run (or other files)."""


class ConfigMismatch(ValueError):
    """Resuming with settings that differ from the run's; `.fields` names them."""

    def __init__(self, message: str, fields: list[str]):
        super().__init__(message)
        self.fields = fields


@dataclass
class Progress:
    """Where a run stands after its last step; all of it goes into the checkpoint."""
    step: int = 0
    epoch: int = 0
    batch: int = 0                       # the next batch of `epoch` (where a resumed run continues)
    trainable: list[int] = field(default_factory=list)   # S, sorted
    events: list[dict] = field(default_factory=list)     # unfreeze events (schedule.json)
    best: dict | None = None             # {"step", "value", "metrics"} of the best dev evaluation
    loss_sum: float = 0.0                # losses since the last log line
    loss_count: int = 0
    elapsed: float = 0.0                 # training seconds before this process

    def advance(self, step: int, epoch: int, position: int, loss: float) -> None:
        self.step, self.epoch, self.batch = step, epoch, position + 1
        self.loss_sum += loss
        self.loss_count += 1

    def improved(self, step: int, value: float, metrics: dict) -> bool:
        """Record a dev evaluation; True when it is the best so far."""
        if self.best is not None and value <= self.best["value"]:
            return False
        self.best = {"step": step, "value": value, "metrics": metrics}
        return True


class Run:
    """One run directory. Created before any expensive work, so a wrong directory fails at once."""

    def __init__(self, directory: str | os.PathLike, resume: bool = False, overwrite: bool = False):
        self.dir, self.resume = Path(directory), resume
        if resume and not (self.dir / "checkpoint.pt").exists():
            raise FileNotFoundError(f"no checkpoint.pt in {self.dir}; start the run without resuming")
        if not resume and self.dir.exists() and any(self.dir.iterdir()):
            if not overwrite:
                raise RunExists(f"{self.dir} already holds {'a run' if self.has_config else 'other files'}")
            if not self.has_config:
                raise RunExists(f"{self.dir} does not hold a run (no config.json); refusing to delete its files")
        self.overwrite = overwrite
        self.signum = 0
        self.started = time.time()
        self.parts: dict = {}
        self.device = torch.device("cpu")
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)

    @property
    def has_config(self) -> bool:
        return (self.dir / "config.json").exists()

    def _on_signal(self, signum, frame) -> None:
        self.signum = signum

    def start(self, config: dict, resumable: frozenset[str] = frozenset()) -> None:
        """A new run writes config.json and empty logs (replacing an old run's files with `overwrite`); a resumed
        one checks that its settings equal the saved ones, except the `resumable` keys and settings added to the
        code after the run started (absent from its config.json)."""
        if self.resume:
            saved = json.loads((self.dir / "config.json").read_text())
            differ = sorted(k for k in config if k not in resumable and k in saved and saved[k] != config[k])
            if differ:
                raise ConfigMismatch(f"settings differ from the run in {self.dir} ({', '.join(differ)})", differ)
            return
        if self.overwrite:
            for name in RUN_FILES:
                path = self.dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.json", json.dumps(config, indent=2))
        (self.dir / "log.jsonl").write_text("")
        atomic_write_text(self.dir / "schedule.json", json.dumps([]))

    # --- logs ----------------------------------------------------------------------------------------------------
    def log(self, progress: Progress, record: dict) -> None:
        """One log.jsonl line: the mean loss since the last line (none before the first step), then `record`."""
        loss = dict(loss=progress.loss_sum / progress.loss_count) if progress.loss_count else {}
        line = dict(step=progress.step, epoch=progress.epoch, **loss, **record)
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        progress.loss_sum, progress.loss_count = 0.0, 0

    def unfrozen(self, progress: Progress, step: int, layers: list[int], scores: dict[int, float] | None) -> None:
        event = {"step": step, "layers": layers}
        if scores is not None:
            event["fisher"] = {str(j): v for j, v in sorted(scores.items())}
        progress.events.append(event)
        atomic_write_text(self.dir / "schedule.json", json.dumps(progress.events, indent=1))

    def finish(self, progress: Progress) -> None:
        summary = dict(steps=progress.step, best=progress.best, events=progress.events,
                       train_seconds=round(self.elapsed(progress), 1))
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2))

    def elapsed(self, progress: Progress) -> float:
        return progress.elapsed + time.time() - self.started

    # --- checkpoints ---------------------------------------------------------------------------------------------
    def track(self, device: torch.device, **parts) -> None:
        """The objects whose state a checkpoint holds: modules, optimizer, LR scheduler, grad scaler (by name), and
        the device the run trains on (whose random generator it holds)."""
        self.device, self.parts = device, parts

    def checkpoint(self, progress: Progress) -> None:
        (self.dir / "log.jsonl").open("a").close()
        state = dict(progress=dataclasses.asdict(dataclasses.replace(progress, elapsed=self.elapsed(progress))),
                     parts={name: part.state_dict() for name, part in self.parts.items()},
                     rng=rng_state(self.device), device=self.device.type,
                     log_size=(self.dir / "log.jsonl").stat().st_size)
        atomic_torch_save(state, self.dir / "checkpoint.pt")

    def restore(self) -> Progress:
        """Load checkpoint.pt into the tracked objects; truncate log.jsonl to its size then; return the progress.
        ValueError when the file is not a checkpoint this code can read without unpickling code."""
        path = self.dir / "checkpoint.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{path} cannot be resumed: it holds Python objects besides tensors and plain data, which "
                             "resuming never unpickles (written by an older version of train.py, or not by train.py); "
                             "start the run again with --overwrite") from None
        except (RuntimeError, EOFError) as err:
            raise ValueError(f"{path} cannot be resumed: it is damaged or not a checkpoint "
                             f"({str(err).strip().splitlines()[0][:160]}); start the run again with --overwrite") from None
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        set_rng_state(state["rng"], self.device)
        if state["device"] != self.device.type:
            print(f"note: {path} was written on {state['device']} and the run continues on {self.device.type}: "
                  "from the same state, but not bit-identical to a run that stayed on one device", file=sys.stderr)
        with open(self.dir / "log.jsonl", "r+b") as f:
            f.truncate(state["log_size"])  # drop lines written after the checkpoint
        self.started = time.time()
        return Progress(**state["progress"])

    def end_of_step(self, progress: Progress, save_every: int) -> bool:
        """Checkpoint every `save_every` steps, and on a signal; True when the run must stop (signalled)."""
        if (save_every and progress.step % save_every == 0) or self.signum:
            self.checkpoint(progress)
        return bool(self.signum)


RESULTS_NAME = re.compile(r"results(?:-(?P<task>[a-z]+))?-(?P<split>test|dev)(?P<final>-final)?\.json")  # ↓ its names


def results_path(run_dir: str | os.PathLike, task: str, run_task: str, split: str, checkpoint: str = "best") -> Path:
    """Where evaluate.py writes a run's results: RUN/results[-TASK]-SPLIT[-final].json (TASK when it is not the
    task the run trained on, e.g. mlqa for a SQuAD run trained as xquad)."""
    suffix = (f"-{task}" if task != run_task else "") + f"-{SPLIT_NAMES[split]}" + ("-final" if checkpoint == "final" else "")
    return Path(run_dir) / f"results{suffix}.json"


# --- atomic files and RNG state ----------------------------------------------------------------------------------

def rng_state(device: torch.device) -> dict:
    """Every random generator the next step may draw from, as tensors and plain data: Python's, NumPy's, torch's CPU
    generator and, on CUDA, the training device's (that one GPU's: a run may resume with fewer GPUs visible)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "cached_gaussian": cached_gaussian}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state`'s generators. A CUDA generator is restored onto the training device, whatever its index
    was when saved; resumed on another device type, that device's generator keeps its seeding from --seed."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
