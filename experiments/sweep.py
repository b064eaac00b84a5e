"""Multi-seed sweeps: seeds × presets (and/or tasks × schedules), one run after another or one per GPU.

    python -m experiments.sweep --presets xnli-mbert-standard,xnli-mbert-gu --seeds 1,2,3 --root runs/sweep
    python -m experiments.sweep --tasks xnli --schedules standard,gu,fun --seeds 1,2,3 --root runs/e5 \\
        --extra "--model ../shared/models/multilingual-e5-small --train-file ... --max-steps 300" \\
        --evaluate "--test-dir ../shared/data/xnli --test-split dev"
    python -m experiments.sweep --presets 'xnli-*-gu' --seeds 1,2 --root runs/sweep --gpus all --extra "--bf16"  # one run per GPU
    python -m experiments.sweep ... --emit slurm > jobs.sh && sbatch jobs.sh                         # a Slurm array
    python -m experiments.sweep --presets xnli-mbert-gu --permutations 9 --perm-seed 0 --root runs/perm   # paper Fig. 4

Run i lives in ROOT/NAME/seedS (NAME: the preset, or TASK[-MODEL]-SCHEDULE). Every run is decided from its
directory when its turn comes (`run_status`), so a sweep can be stopped and started again at any time:
summary.json present → skipped; checkpoint.pt without summary.json → continued with --resume; config.json
without a checkpoint (died before its first one) → started again with --overwrite. Then each `--evaluate`
whose results file is missing runs evaluate.py. SIGINT/SIGTERM reach the running train.py (it writes a
checkpoint and exits 128+signal; Ctrl-C through the terminal, SIGTERM forwarded by the sweep); the sweep
starts nothing more and exits 128+signal too.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from math import factorial
from pathlib import Path
from typing import Callable

import cli
from cli import UsageError, blame
from fun.hub import MODELS, model_tag
from fun.presets import PRESETS, expand
from fun.run import SPLIT_NAMES, results_path

HERE = Path(__file__).resolve().parents[1]  # the repository: train.py and evaluate.py
MANAGED = ("--seed", "--output-dir", "--resume", "--overwrite", "--preset")  # the sweep sets these per run
FLAG_VALUED = ("--extra", "--evaluate")  # options whose value is itself flags (train.py's, evaluate.py's)


@dataclass
class Run:
    name: str
    seed: int
    args: list[str]              # train.py flags, without --seed and --output-dir
    task: str                    # the task train.py runs (config.json's)
    root: Path
    eval_tasks: list[str] = field(default_factory=list)  # evaluate on these (xquad-X and mlqa-X share a run)

    @property
    def dir(self) -> Path:
        return self.root / self.name / f"seed{self.seed}"

    def train_argv(self) -> list[str]:
        return [*self.args, "--seed", str(self.seed), "--output-dir", str(self.dir)]


def run_status(run_dir: Path) -> str:
    """What a sweep does with a run directory (pure function of the files in it):
    'done' (summary.json: skip), 'resume' (checkpoint.pt without summary.json: --resume),
    'restart' (config.json without a checkpoint, i.e. it died before its first one: --overwrite), 'start'."""
    if (run_dir / "summary.json").exists():
        return "done"
    if (run_dir / "checkpoint.pt").exists():
        return "resume"
    if (run_dir / "config.json").exists():
        return "restart"
    return "start"


def sample_permutations(n: int, num_layers: int = 12, seed: int = 0) -> list[list[int]]:
    """Paper Fig. 4 / footnote 8: n distinct random orders of adapters 0..L-2 (the top one, L-1, trains from
    step 0) that start with L-2 or L-3 (10 or 9 for L = 12; others are rejected), then top-down as the last."""
    if num_layers < 3:
        raise UsageError(f"--num-layers {num_layers}: the permutation study needs at least 3 layers")
    layers, top_down = list(range(num_layers - 1)), list(range(num_layers - 2, -1, -1))
    available = 2 * factorial(num_layers - 2) - 1  # orders starting with L-2 or L-3, top-down excluded
    if n > available:
        raise UsageError(f"--permutations {n}: only {available} distinct orders start with {num_layers - 2} or "
                         f"{num_layers - 3} for {num_layers} layers")
    rng, seen, out = random.Random(seed), {tuple(top_down)}, []
    while len(out) < n:
        perm = rng.sample(layers, len(layers))
        if perm[0] in (num_layers - 2, num_layers - 3) and tuple(perm) not in seen:
            seen.add(tuple(perm))
            out.append(perm)
    return out + [top_down]


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run (presets and/or tasks × schedules, × seeds)")
    g.add_argument("--presets", help="comma-separated preset names or patterns ('xnli-mbert-*'); see train.py --list-presets")
    g.add_argument("--tasks", help="comma-separated tasks, crossed with --schedules (and --models)")
    g.add_argument("--schedules", help="comma-separated schedules for --tasks")
    g.add_argument("--models", help="comma-separated models for --tasks: mbert, xlmr, mdeberta, a Hub id or a directory")
    g.add_argument("--seeds", default="1", help="comma-separated seeds (paper: 4 runs)")
    g.add_argument("--extra", default="", help="train.py flags for every run, e.g. \"--train-file F --max-steps 100\" "
                                               "or \"--bf16\"")
    g.add_argument("--root", required=True, help="sweep directory: runs go to ROOT/NAME/seedS")
    g = p.add_argument_group("random-permutation study (paper Fig. 4)")
    g.add_argument("--permutations", type=int, help="replace each schedule by N random orders starting with L-2 or "
                                                    "L-3, plus top-down, as --schedule order runs")
    g.add_argument("--perm-seed", type=int, default=0, help="seed of the permutation sampler")
    g.add_argument("--num-layers", type=int, default=12, help="L of the model (12 for mBERT / XLM-R base)")
    g = p.add_argument_group("execution")
    g.add_argument("--evaluate", action="append", default=[], metavar="FLAGS",
                   help="evaluate.py flags; evaluates each run whose results file is missing. Repeat with "
                        "--task T inside for a run's other test set (xquad runs on mlqa)")
    g.add_argument("--gpus", help="comma-separated GPU ids, or 'all': one run per GPU at a time "
                                  "(CUDA_VISIBLE_DEVICES per run); default: one run at a time, environment unchanged")
    g.add_argument("--index", type=int, help="do only run INDEX (0-based) of the sweep; what Slurm array tasks call")
    g.add_argument("--emit", choices=("commands", "slurm"), help="print the commands (one line per run) or a "
                                                                 "Slurm array script instead of running")
    g.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option for --emit slurm, e.g. --sbatch=--partition=gpu (repeatable)")
    g.add_argument("--python", default=sys.executable, help="interpreter for train.py / evaluate.py")
    return p


def split_list(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_list(value)]
    except ValueError:
        raise UsageError(f"--seeds {value}: expected comma-separated integers, e.g. 1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {value}: expected distinct integers, e.g. 1,2,3")
    return seeds


def check_flags(flags: list[str], managed: tuple[str, ...], where: str) -> None:
    for flag in flags:
        if flag.split("=")[0] in managed:
            raise UsageError(f"{where}: {flag.split('=')[0]} is set by the sweep per run; leave it out")


def parse_evaluations(values: list[str]) -> dict[str | None, list[str]]:
    """--evaluate strings → {task or None (the run's own task): evaluate.py flags without --task}."""
    out: dict[str | None, list[str]] = {}
    for value in values:
        flags = shlex.split(value)
        check_flags(flags, ("--output",), "--evaluate")  # the sweep relies on evaluate.py's file names
        task = None
        for i, flag in enumerate(flags):
            if flag == "--task" and i + 1 < len(flags):
                task = flags[i + 1]
                flags = flags[:i] + flags[i + 2:]
                break
            if flag.startswith("--task="):
                task, flags = flag.split("=", 1)[1], flags[:i] + flags[i + 1:]
                break
        if task in out:
            raise UsageError(f"--evaluate: two evaluations for {'task ' + task if task else 'the runs’ own task'}")
        out[task] = flags
    return out


def results_file(run: Run, task: str, flags: list[str]) -> Path:
    """The file evaluate.py writes for these flags (fun.run.results_path)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--test-split", default="test", choices=tuple(SPLIT_NAMES))
    p.add_argument("--checkpoint", default="best")
    known, _ = p.parse_known_args(flags)
    return results_path(run.dir, task, run.task, known.test_split, known.checkpoint)


def evaluations_for(run: Run, evaluations: dict[str | None, list[str]]) -> list[tuple[str, list[str], Path]]:
    """(task, evaluate.py flags, results file) for each of the run's test sets that has --evaluate flags."""
    out = []
    for task in run.eval_tasks:
        flags = evaluations.get(task, evaluations.get(None))
        if flags is not None:
            out.append((task, flags, results_file(run, task, flags)))
    return out


def plan(args: argparse.Namespace) -> list[Run]:
    """The sweep's runs, in a fixed order (names as given, then seeds), so --index is stable."""
    seeds, extra, root = parse_seeds(args.seeds), shlex.split(args.extra), Path(args.root)
    check_flags(extra, MANAGED, "--extra")
    tasks, schedules, models = split_list(args.tasks), split_list(args.schedules), split_list(args.models)
    if not args.presets and not tasks:
        raise UsageError("nothing to run: give --presets and/or --tasks with --schedules")
    if (schedules or models) and not tasks:
        raise UsageError("--schedules and --models go with --tasks")
    if args.permutations is not None:
        if args.permutations < 1:
            raise UsageError(f"--permutations {args.permutations}: must be a positive integer")
        if schedules:
            raise UsageError("--permutations replaces the schedule by --schedule order; leave out --schedules "
                             "(a preset's schedule only chooses its k and lr)")
    elif tasks and not schedules:
        raise UsageError("--tasks needs --schedules, e.g. --schedules standard,gu,fun")

    bases: list[tuple[str, list[str], str, list[str]]] = []   # (name, train.py flags, task, eval tasks)
    by_training: dict[tuple, list[str]] = {}
    with blame("--presets"):
        names = expand(args.presets or "")
    for name in names:
        preset = PRESETS[name]
        if preset.training in by_training:  # mlqa-X after xquad-X (or vice versa): one SQuAD run, two test sets
            by_training[preset.training].append(preset.flags["task"])
            continue
        eval_tasks = [preset.flags["task"]]
        by_training[preset.training] = eval_tasks
        bases.append((name, ["--preset", name], preset.flags["task"], eval_tasks))
    for task in tasks:
        for model in models or [None]:
            for schedule in schedules or [None]:
                hub = MODELS.get(model, model)
                training = ("squad" if task in ("xquad", "mlqa") else task, hub, schedule)
                if training in by_training:  # --tasks xquad,mlqa: one SQuAD run, two test sets
                    by_training[training].append(task)
                    continue
                name = "-".join(x for x in (task, model and model_tag(hub), schedule) if x)
                flags = ["--task", task] + (["--model", hub] if model else []) + (["--schedule", schedule] if schedule else [])
                by_training[training] = [task]
                bases.append((name, flags, task, by_training[training]))

    if args.permutations is not None:
        orders = sample_permutations(args.permutations, args.num_layers, args.perm_seed)
        bases = [(f"{name}-{'topdown' if i == len(orders) else f'perm{i:02d}'}",
                  flags + ["--schedule", "order", "--order", ",".join(map(str, order))], task, eval_tasks)
                 for name, flags, task, eval_tasks in bases for i, order in enumerate(orders, 1)]
    names = [b[0] for b in bases]
    if len(set(names)) != len(names):
        raise UsageError(f"two runs would share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    return [Run(name, seed, flags + extra, task, root, list(eval_tasks))
            for name, flags, task, eval_tasks in bases for seed in seeds]


def validate(runs: list[Run]) -> None:
    """Resolve every run's train.py flags (no training) so a typo fails now, not hours into the sweep."""
    import train
    from fun.config import resolve

    for run in runs:
        try:
            with cli.blame_config():
                resolve(train.parse_config(run.train_argv()))
        except UsageError as err:
            raise UsageError(f"{run.name}: train.py {err}") from None


def visible_gpus(value: str | None) -> list[str | None]:
    """The worker slots: GPU ids for CUDA_VISIBLE_DEVICES, or [None] (one run at a time, env unchanged)."""
    if not value:
        return [None]
    if value != "all":
        gpus = split_list(value)
    elif os.environ.get("CUDA_VISIBLE_DEVICES"):
        gpus = split_list(os.environ["CUDA_VISIBLE_DEVICES"])
    else:
        import torch
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if not gpus:
        raise UsageError(f"--gpus {value}: no GPU visible")
    repeated = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if repeated:
        raise UsageError(f"--gpus {value}: GPU {', '.join(repeated)} given more than once; one run per GPU at a time, "
                         "so name each GPU once")
    return gpus


def check_device_flags(args: argparse.Namespace, evaluations: dict[str | None, list[str]]) -> None:
    """With --gpus each run sees only its own GPU (CUDA_VISIBLE_DEVICES), as cuda: a --device for the children
    would name a GPU they cannot see, or move them off theirs."""
    for where, flags in [("--extra", shlex.split(args.extra)), *(("--evaluate", f) for f in evaluations.values())]:
        if any(flag.split("=")[0] == "--device" for flag in flags):
            raise UsageError(f"{where}: --device goes without --gpus: with --gpus each run sees only its own GPU, "
                             "as cuda (the default device); leave --device out")


def script(name: str) -> str:
    """Path of one of our scripts as a command line names it: relative when run from the repository."""
    path = HERE / name
    return name if Path.cwd().resolve() == HERE else str(path)


# --- running ------------------------------------------------------------------------------------------------

Launch = Callable[[list[str], dict | None, Path | None], int]


class Sweep:
    """Runs the plan: one worker per slot (GPU); forwards SIGTERM to the children, then starts nothing new."""

    def __init__(self, runs: list[Run], evaluations: dict, python: str, slots: list[str | None],
                 launch: Launch | None = None):
        self.runs, self.evaluations, self.python, self.slots = runs, evaluations, python, slots
        self.launch = launch or self.subprocess_launch
        self.lock, self.children, self.signum = threading.Lock(), set(), 0
        self.failed: list[tuple[Run, str]] = []
        self.counts = {"done": 0, "start": 0, "resume": 0, "restart": 0}

    def subprocess_launch(self, cmd: list[str], env: dict | None, log: Path | None) -> int:
        out = open(log, "a") if log else None
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
            with self.lock:
                self.children.add(proc)
            if self.signum:  # a signal came while starting it
                proc.send_signal(self.signum)
            return proc.wait()
        finally:
            with self.lock:
                self.children = {c for c in self.children if c.poll() is None}
            if out:
                out.close()

    def handle(self, signum, frame) -> None:
        self.signum = signum
        if signum == signal.SIGINT:  # Ctrl-C already reached the children, which share our process group
            return
        with self.lock:
            for child in self.children:
                if child.poll() is None:
                    child.send_signal(signum)

    def say(self, run: Run, message: str, slot: str | None) -> None:
        where = f" [GPU {slot}]" if slot is not None else ""
        print(f"[{self.runs.index(run) + 1}/{len(self.runs)}] {run.name} seed {run.seed}{where}: {message}", flush=True)

    def do(self, run: Run, slot: str | None) -> None:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot) if slot is not None else None
        log = run.dir.parent / f"{run.dir.name}.log" if len(self.slots) > 1 else None
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
        status = run_status(run.dir)
        with self.lock:
            self.counts[status] += 1
        if status == "done":
            self.say(run, "finished before; skipped", slot)
        else:
            flag = {"resume": ["--resume"], "restart": ["--overwrite"]}.get(status, [])
            self.say(run, {"start": "training", "resume": "resuming from checkpoint.pt",
                           "restart": "restarting (no checkpoint)"}[status] + (f" → {log}" if log else ""), slot)
            code = self.launch([self.python, str(HERE / "train.py"), *run.train_argv(), *flag], env, log)
            if code != 0:
                if not self.signum:
                    self.failed.append((run, f"train.py exit {code}" + (f", see {log}" if log else "")))
                    self.say(run, f"failed: train.py exit {code}", slot)
                return
            if log:
                self.say(run, "trained", slot)
        for task, flags, results in evaluations_for(run, self.evaluations):
            if results.exists() or self.signum:
                continue
            self.say(run, f"evaluating on {task} → {results.name}", slot)
            task_flag = ["--task", task] if task != run.task else []
            code = self.launch([self.python, str(HERE / "evaluate.py"), str(run.dir), *task_flag, *flags], env, log)
            if code != 0 and not self.signum:
                self.failed.append((run, f"evaluate.py --task {task} exit {code}" + (f", see {log}" if log else "")))

    def worker(self, slot: str | None, queue: list[Run]) -> None:
        while not self.signum:
            with self.lock:
                if not queue:
                    return
                run = queue.pop(0)
            self.do(run, slot)

    def __call__(self) -> int:
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        queue = list(self.runs)
        try:
            if len(self.slots) == 1:  # in this thread: train.py run in-process (tests) may then install handlers
                self.worker(self.slots[0], queue)
            else:
                threads = [threading.Thread(target=self.worker, args=(slot, queue), daemon=True) for slot in self.slots]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        c = self.counts
        print(f"sweep: {len(self.runs)} runs: {c['done']} finished before, {c['start']} started, {c['resume']} resumed, "
              f"{c['restart']} restarted; {len(self.failed)} failed", flush=True)
        for run, why in self.failed:
            print(f"  failed: {run.dir} ({why})", file=sys.stderr)
        if self.signum:
            print(f"sweep: stopped by signal {self.signum}; run the same command again to continue", file=sys.stderr)
            return 128 + self.signum
        return 1 if self.failed else 0


# --- emitting -----------------------------------------------------------------------------------------------

def command_line(run: Run, evaluations: dict) -> str:
    """The shell line that brings one run up to date now (training as its directory requires, then evaluations)."""
    status = run_status(run.dir)
    parts = []
    if status != "done":
        flag = {"resume": ["--resume"], "restart": ["--overwrite"]}.get(status, [])
        parts.append(shlex.join(["python", script("train.py"), *run.train_argv(), *flag]))
    for task, flags, results in evaluations_for(run, evaluations):
        if not results.exists():
            parts.append(shlex.join(["python", script("evaluate.py"), str(run.dir),
                                     *(["--task", task] if task != run.task else []), *flags]))
    return " && ".join(parts) if parts else f"# done: {run.dir}"


def sweep_argv(args: argparse.Namespace) -> list[str]:
    """This sweep's own selection flags (what each Slurm array task repeats, adding --index)."""
    argv = ["--root", args.root, "--seeds", args.seeds]
    for name in ("presets", "tasks", "schedules", "models", "extra", "permutations"):
        if getattr(args, name):
            argv.append(f"--{name}={getattr(args, name)}")  # '=': values may start with '--
    if args.permutations:
        argv += ["--perm-seed", str(args.perm_seed), "--num-layers", str(args.num_layers)]
    for flags in args.evaluate:
        argv.append(f"--evaluate={flags}")
    return argv


def slurm_script(runs: list[Run], args: argparse.Namespace) -> str:
    """A Slurm array: task i runs `python -m experiments.sweep ... --index i`, which decides skip/resume/evaluate at run time, so a
    preempted and requeued task continues from its checkpoint (train.py writes one on SIGTERM)."""
    root = Path(args.root)
    lines = ["#!/bin/bash",
             "#SBATCH --job-name=fun-sweep",
             f"#SBATCH --array=0-{len(runs) - 1}",
             "#SBATCH --gres=gpu:1",
             "#SBATCH --cpus-per-task=8",
             "#SBATCH --requeue",
             "#SBATCH --signal=TERM@300  # train.py checkpoints on SIGTERM; a requeued or resubmitted task resumes",
             f"#SBATCH --output={root}/slurm-%A_%a.out  # (sweep.py --emit slurm created {root})",
             *(f"#SBATCH {opt}" for opt in args.sbatch),
             "# task: run directory",
             *(f"#   {i}: {run.dir}" for i, run in enumerate(runs)),
             "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}",
             *([] if Path.cwd().resolve() == HERE else [f"export PYTHONPATH={shlex.quote(str(HERE))}"]),
             shlex.join(["srun", "python", "-m", "experiments.sweep", *sweep_argv(args)]) + ' --index "$SLURM_ARRAY_TASK_ID"']
    return "\n".join(lines)


def attach_values(argv: list[str]) -> list[str]:
    """`--extra --bf16` → `--extra=--bf16`: argparse reads a lone value that starts with '-' as a flag of its own,
    so a single flag given to --extra or --evaluate would be refused ("expected one argument")."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in FLAG_VALUED and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None, launch: Launch | None = None) -> int:
    argv = attach_values(sys.argv[1:] if argv is None else argv)
    return cli.main(lambda: sweep(build_parser().parse_args(argv), launch))


def sweep(args: argparse.Namespace, launch: Launch | None) -> int:
    runs = plan(args)
    evaluations = parse_evaluations(args.evaluate)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            raise UsageError(f"--index {args.index}: the sweep has runs 0..{len(runs) - 1}")
        runs = [runs[args.index]]
    if args.gpus:
        check_device_flags(args, evaluations)
    slots = visible_gpus(args.gpus)
    validate(runs)
    for task in set(evaluations) - {None} - {t for run in runs for t in run.eval_tasks}:
        print(f"warning: --evaluate --task {task}: no run of this sweep is for {task}; ask for it "
              f"({task}-* presets or --tasks {task}) to evaluate on it", file=sys.stderr)
    if args.emit == "commands":
        print("\n".join(command_line(run, evaluations) for run in runs))
        return 0
    if args.emit == "slurm":
        Path(args.root).mkdir(parents=True, exist_ok=True)  # Slurm opens --output there before the script runs
        print(slurm_script(runs, args))
        return 0
    return Sweep(runs, evaluations, args.python, slots, launch)()


if __name__ == "__main__":
    sys.exit(main())
