"""Sweeps (plan, skip/resume decisions, emitted commands, GPU fan-out), aggregation into paper tables with known
inputs, the footnote-9 grouping and the Fig. 4 permutation sampler."""

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import train
from experiments import aggregate, sweep

XNLI_RESULTS = {  # (schedule, seed) → per-language accuracy; average = their mean (as evaluate.py writes it)
    ("standard", 1): dict(en=80.0, ar=50.0, sw=40.0), ("standard", 2): dict(en=81.0, ar=52.0, sw=46.0),
    ("fun", 1): dict(en=82.0, ar=45.0, sw=55.0), ("fun", 2): dict(en=82.0, ar=47.0, sw=57.0),
}


def write_results(run_dir: Path, en: float, split="test", task="xnli", **langs) -> None:
    per_language = {lang: {"accuracy": v} for lang, v in langs.items()}
    average = {"accuracy": statistics.mean(langs.values())}
    low = min(langs, key=langs.get)
    suffix = ("" if task == "xnli" else f"-{task}") + f"-{split}"
    (run_dir / f"results{suffix}.json").write_text(json.dumps(dict(
        task=task, metric="accuracy", split=split, source={"accuracy": en}, per_language=per_language,
        average=average, lowest={"lang": low, "value": langs[low]})))


def tiny_extra(model_dir, nli_files, *more) -> str:
    train_file, dev_file = nli_files
    return " ".join([f"--model {model_dir} --train-file {train_file} --dev-file {dev_file}",
                     "--batch-size 8 --no-progress --threads 1", *more])


def in_process(calls: list, interrupt_at_step: int | None = None):
    """A sweep launcher that runs train.py's main() in this process (a subprocess costs seconds of imports).
    With interrupt_at_step, SIGTERM arrives during that training step: train.py's own handler checkpoints."""
    def launch(cmd, env, log):
        calls.append(cmd[2:])
        assert Path(cmd[1]).name == "train.py", cmd
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        collate, count = train.collate, [0]

        def collate_then_signal(*args, **kwargs):
            count[0] += 1
            if count[0] == interrupt_at_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return collate(*args, **kwargs)

        train.collate = collate_then_signal if interrupt_at_step else collate
        try:
            return train.main(cmd[2:])
        finally:
            train.collate = collate
            for s, handler in saved.items():
                signal.signal(s, handler)
    return launch


def recording(calls: list, seconds: float = 0.0):
    lock = threading.Lock()

    def launch(cmd, env, log):
        time.sleep(seconds)
        with lock:
            calls.append((Path(cmd[1]).name, cmd[2:], (env or {}).get("CUDA_VISIBLE_DEVICES")))
        return 0
    return launch


def test_run_status_decides_skip_resume_restart(tmp_path):
    run = tmp_path / "run"
    assert sweep.run_status(run) == "start"
    run.mkdir()
    assert sweep.run_status(run) == "start"
    (run / "config.json").write_text("{}")
    assert sweep.run_status(run) == "restart"   # died before its first checkpoint
    (run / "checkpoint.pt").write_bytes(b"")
    assert sweep.run_status(run) == "resume"
    (run / "summary.json").write_text("{}")
    assert sweep.run_status(run) == "done"


def test_emit_commands_one_line_per_run(tmp_path, capsys):
    root = tmp_path / "sw"
    (root / "xnli-mbert-gu" / "seed2").mkdir(parents=True)
    (root / "xnli-mbert-gu" / "seed2" / "config.json").write_text("{}")
    (root / "xnli-mbert-gu" / "seed2" / "checkpoint.pt").write_bytes(b"")
    assert sweep.main(["--presets", "xnli-mbert-standard,xnli-mbert-gu", "--seeds", "1,2", "--root", str(root),
                       "--extra", "--max-steps 100", "--emit", "commands", "--evaluate", "--test-dir data/xnli"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0] == (f"python {sweep.script('train.py')} --preset xnli-mbert-standard --max-steps 100 --seed 1 "
                        f"--output-dir {root}/xnli-mbert-standard/seed1 && python {sweep.script('evaluate.py')} "
                        f"{root}/xnli-mbert-standard/seed1 --test-dir data/xnli")
    assert lines[3].startswith(f"python {sweep.script('train.py')} --preset xnli-mbert-gu --max-steps 100 --seed 2 "
                               f"--output-dir {root}/xnli-mbert-gu/seed2 --resume && ")


def test_emit_commands_shares_one_squad_run_between_xquad_and_mlqa(tmp_path, capsys):
    assert sweep.main(["--presets", "xquad-xlmr-gu,mlqa-xlmr-gu", "--root", str(tmp_path), "--emit", "commands",
                       "--evaluate", "--test-dir d/xquad", "--evaluate", "--task mlqa --test-dir d/mlqa"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    run = tmp_path / "xquad-xlmr-gu" / "seed1"
    assert line.endswith(f"--output-dir {run} && python {sweep.script('evaluate.py')} {run} --test-dir d/xquad && "
                         f"python {sweep.script('evaluate.py')} {run} --task mlqa --test-dir d/mlqa")


def test_emit_slurm_array_runs_one_index_per_task(tmp_path, capsys):
    assert sweep.main(["--tasks", "xnli", "--schedules", "standard,gu", "--seeds", "1,2", "--root", str(tmp_path / "sw"),
                       "--extra", "--max-steps 10", "--emit", "slurm", "--sbatch=--time=1:00:00"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-3" in script and "#SBATCH --time=1:00:00" in script
    assert f"#   3: {tmp_path}/sw/xnli-gu/seed2" in script
    assert script.rstrip().endswith('--index "$SLURM_ARRAY_TASK_ID"') and "--tasks=xnli" in script


@pytest.mark.parametrize("extra", [["--extra=--bf16"], ["--extra", "--bf16"], ["--extra", "--device cuda --bf16"]])
def test_emit_slurm_with_bf16_on_a_machine_without_gpu(tmp_path, capsys, extra):
    """Runs are checked where the sweep writes them, but their device is decided where they run: a login node
    without a GPU writes a bf16 (or --device cuda) Slurm array; a lone flag is a valid --extra."""
    assert sweep.main(["--presets", "xnli-mbert-gu", "--seeds", "1", "--root", str(tmp_path / "r"), "--emit", "slurm",
                       *extra]) == 0
    assert f"--extra={extra[-1].removeprefix('--extra=')}" in capsys.readouterr().out


def test_gpu_slots_refuse_a_repeated_gpu_and_a_device_flag(tmp_path, capsys):
    root = ["--tasks", "xnli", "--schedules", "gu", "--root", str(tmp_path), "--emit", "commands"]
    for argv, words in ((["--gpus", "0,0"], "--gpus 0,0: GPU 0 given more than once"),
                        (["--gpus", "0,1", "--extra", "--device cuda:1"], "--extra: --device goes without --gpus"),
                        (["--gpus", "0", "--evaluate", "--device=cuda"], "--evaluate: --device goes without --gpus")):
        assert sweep.main(root + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err, err


def test_bad_sweep_input_is_a_usage_error(tmp_path, capsys):
    root = ["--root", str(tmp_path)]
    for argv, words in ((["--presets", "xnli-mbert-gradual"], "unknown preset"),
                        (["--tasks", "xnli", "--schedules", "gu", "--extra", "--seed 3"], "--seed is set by the sweep"),
                        (["--tasks", "xnli", "--schedules", "sometimes"], "--schedule: invalid choice: 'sometimes'"),
                        (["--tasks", "xnli", "--schedules", "gu", "--extra", "--k zero"], "--k: 'zero' is not a whole number"),
                        (["--tasks", "xnli", "--schedules", "gu", "--seeds", "1,x"], "--seeds"),
                        (["--tasks", "xnli", "--schedules", "gu", "--index", "5"], "--index 5")):
        assert sweep.main(argv + root + ["--emit", "commands"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err, err


def test_sweep_skips_finished_resumes_interrupted_and_evaluates_missing(tiny_bert_dir, nli_files, tmp_path):
    root = tmp_path / "sw"
    for name, seed, files in (("xnli-standard", 1, ("config.json", "checkpoint.pt", "summary.json", "results-test.json")),
                              ("xnli-standard", 2, ("config.json", "checkpoint.pt", "summary.json")),
                              ("xnli-gu", 1, ("config.json", "checkpoint.pt")),
                              ("xnli-gu", 2, ("config.json",))):
        run = root / name / f"seed{seed}"
        run.mkdir(parents=True)
        for f in files:
            (run / f).write_text("{}")
    calls = []
    argv = ["--tasks", "xnli", "--schedules", "standard,gu", "--seeds", "1,2", "--root", str(root),
            "--extra", tiny_extra(tiny_bert_dir, nli_files), "--evaluate", "--test-dir data/xnli"]
    assert sweep.main(argv, launch=recording(calls)) == 0
    got = [(script, args[-1] if script == "train.py" else args[0]) for script, args, _ in calls]
    assert got == [("evaluate.py", str(root / "xnli-standard" / "seed2")),
                   ("train.py", "--resume"), ("evaluate.py", str(root / "xnli-gu" / "seed1")),
                   ("train.py", "--overwrite"), ("evaluate.py", str(root / "xnli-gu" / "seed2"))]


def test_gpus_fan_out_one_run_per_gpu(tiny_bert_dir, nli_files, tmp_path):
    calls = []
    argv = ["--tasks", "xnli", "--schedules", "standard,gu", "--seeds", "1,2", "--root", str(tmp_path),
            "--extra", tiny_extra(tiny_bert_dir, nli_files), "--gpus", "3,5"]
    assert sweep.main(argv, launch=recording(calls, seconds=0.2)) == 0
    assert sorted(args[args.index("--output-dir") + 1] for _, args, _ in calls) == sorted(
        str(tmp_path / n / f"seed{s}") for n in ("xnli-standard", "xnli-gu") for s in (1, 2))
    assert {gpu for _, _, gpu in calls} == {"3", "5"}  # both GPUs busy, CUDA_VISIBLE_DEVICES set per run


def test_tiny_sweep_2_seeds_x_2_schedules_then_aggregate_known_results(tiny_bert_dir, nli_files, tmp_path, capsys):
    root, calls = tmp_path / "sw", []
    argv = ["--tasks", "xnli", "--schedules", "standard,fun", "--seeds", "1,2", "--root", str(root),
            "--extra", tiny_extra(tiny_bert_dir, nli_files, "--max-steps 2 --k 1 --fisher-batches 1")]
    assert sweep.main(argv, launch=in_process(calls)) == 0
    assert len(calls) == 4
    for (schedule, seed), values in XNLI_RESULTS.items():
        run = root / f"xnli-{schedule}" / f"seed{seed}"
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        write_results(run, **values)
    write_results(root / "xnli-fun" / "seed1", en=0.0, split="dev", ar=0.0, sw=0.0)  # another split: ignored
    calls.clear()
    assert sweep.main(argv, launch=in_process(calls)) == 0 and calls == []  # all finished: nothing runs again

    capsys.readouterr()
    out = tmp_path / "tables"
    assert aggregate.main([str(root), "--split", "test", "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert md == (out / "tables.md").read_text()
    tag = tiny_bert_dir.name
    # standard: en 80, 81; sw 40, 46 (its lowest); average 45, 49. fun: en 82, 82; sw 55, 57; average 50, 52
    assert f"| {tag} | standard | 1,2 | 80.50 ± 0.71 | sw 43.00 ± 4.24 | 47.00 ± 2.83 |" in md
    assert f"| {tag} | fun | 1,2 | 82.00 ± 0.00 | sw 56.00 ± 1.41 | 51.00 ± 1.41 |" in md  # paper: standard's lowest
    assert f"| {tag} | standard | 80.50 | 51.00 | 43.00 | 47.00 ± 2.83 |" in md            # per-language table
    rows = {r["method"]: r for r in csv.DictReader(open(out / "table2-xnli.csv"))}
    assert float(rows["standard"]["avg_accuracy_mean"]) == 47.0
    assert float(rows["standard"]["avg_accuracy_std"]) == statistics.stdev([45.0, 49.0]) == math.sqrt(8)
    assert float(rows["fun"]["lowest_accuracy_std"]) == math.sqrt(2) and rows["fun"]["lowest_lang"] == "sw"
    for seed in (1, 2):  # realised FUN orders from schedule.json: top adapter first, then one per step
        events = json.loads((root / "xnli-fun" / f"seed{seed}" / "schedule.json").read_text())
        order = [3] + [j for e in events for j in e["layers"]]
        assert len(order) == 3 and f"- {tag} fun seed {seed}: [{', '.join(map(str, order))}]" in md

    assert aggregate.main([str(root), "--lowest", "method"]) == 0
    assert f"| {tag} | fun | 1,2 | 82.00 ± 0.00 | ar 46.00 ± 1.41 | 51.00 ± 1.41 |" in capsys.readouterr().out


def test_sweep_resumes_a_run_interrupted_by_sigterm(tiny_bert_dir, nli_files, tmp_path):
    root, calls = tmp_path / "sw", []
    argv = ["--tasks", "xnli", "--schedules", "gu", "--root", str(root),
            "--extra", tiny_extra(tiny_bert_dir, nli_files, "--max-steps 6 --k 2 --log-every 1 --save-every 1000")]
    assert sweep.main(argv, launch=in_process(calls, interrupt_at_step=3)) == 1  # train.py exited 128+SIGTERM
    run = root / "xnli-gu" / "seed1"
    assert sweep.run_status(run) == "resume" and not (run / "final").exists()
    assert sweep.main(argv, launch=in_process(calls)) == 0
    assert calls[1][-1] == "--resume"
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_footnote9_grouping():
    values = {"a": 61.5, "b": 61.0, "c": 60.4, "d": 60.6, "e": 58.0, "f": 57.1, "g": 50.0, "h": 49.0}
    # a's group takes everything within 1 of 61.5 (b, d) but not c (1.1 below), although c is within 1 of d;
    # exactly 1 point joins (h with g)
    assert aggregate.group_within(values) == [["a", "b", "d"], ["c"], ["e", "f"], ["g", "h"]]
    assert aggregate.group_within(values, delta=0.0) == [[n] for n in "abdcefgh"]
    assert aggregate.group_within({}) == []


def test_sample_permutations_like_paper_fig4():
    perms = sweep.sample_permutations(9, num_layers=12, seed=0)
    assert len(perms) == 10 and perms[-1] == list(range(10, -1, -1))  # top-down is the 10th
    assert all(sorted(p) == list(range(11)) and p[0] in (10, 9) for p in perms)
    assert len({tuple(p) for p in perms}) == 10
    assert sweep.sample_permutations(9, 12, seed=0) == perms != sweep.sample_permutations(9, 12, seed=1)
    assert len(sweep.sample_permutations(3, num_layers=4)) == 4  # all 3 orders of 0..2 starting with 2 or 1, but 2,1,0
    with pytest.raises(sweep.UsageError, match="only 3 distinct"):
        sweep.sample_permutations(4, num_layers=4)


def test_permutation_sweep_and_grouping_in_tables(tmp_path, capsys):
    root = tmp_path / "perm"
    assert sweep.main(["--presets", "xnli-mbert-gu", "--permutations", "3", "--num-layers", "4", "--root", str(root),
                       "--emit", "commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "--schedule order --order 2,1,0 " in lines[-1] and "xnli-mbert-gu-topdown" in lines[-1]
    for line, average in zip(lines, (60.0, 59.5, 57.0, 61.0)):  # fake the four finished, evaluated runs
        argv = line.split(" && ")[0].split()[2:]
        run = Path(argv[argv.index("--output-dir") + 1])
        run.mkdir(parents=True)
        order = argv[argv.index("--order") + 1]
        (run / "config.json").write_text(json.dumps(dict(task="xnli", model="bert-base-multilingual-cased", seed=1,
                                                         schedule="order", order=[int(x) for x in order.split(",")],
                                                         num_layers=4)))
        write_results(run, en=80.0, ar=average, sw=average)
    assert aggregate.main([str(root)]) == 0
    md = capsys.readouterr().out
    assert "| 1 | 60.50 | gu-topdown (61.00), gu-perm01 (60.00) | [2, 1, 0]; [" in md
    assert "| 2 | 59.50 | gu-perm02 (59.50) |" in md and "| 3 | 57.00 | gu-perm03 (57.00) |" in md


def test_one_seed_shows_std_as_dash():
    assert aggregate.cell([61.0]) == "61.00 ± –"
    assert aggregate.cell([60.0, 62.0]) == "61.00 ± 1.41"


def test_paired_differences_t_interval_bootstrap_and_kendall_tau(tmp_path):
    mean, low, high = aggregate.paired_t_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert mean == 2.0 and low == pytest.approx(2 - 4.303 / 3 ** 0.5) and high == pytest.approx(2 + 4.303 / 3 ** 0.5)
    assert aggregate.bootstrap_interval([[0.5, 0.5], [0.5, 0.5]]) == (0.5, 0.5)
    assert aggregate.kendall_tau([3, 2, 1, 0], [3, 2, 1, 0]) == 1.0
    assert aggregate.kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    assert aggregate.kendall_tau([3, 1, 2, 0], [3, 2, 1, 0]) == pytest.approx(1 - 2 / 6)

    def result(method, seed, de, sw, en):
        return aggregate.Result("xnli", "e5", method, seed, {"accuracy": en}, {"accuracy": (de + sw) / 2},
                                {"de": {"accuracy": de}, "sw": {"accuracy": sw}}, "accuracy", tmp_path, method)

    rows = aggregate.build_rows([result("standard", 1, 50, 40, 70), result("standard", 2, 52, 40, 72),
                                 result("gu", 1, 52, 44, 69), result("gu", 2, 53, 43, 72),
                                 result("gu", 3, 60, 60, 80)])["xnli"]  # seed 3 has no standard run: not paired
    md, records = aggregate.paired_differences(rows)
    (gu,) = records
    assert gu["method"] == "gu" and gu["seeds"] == 2 and gu["languages"] == 2
    assert gu["diff_avg"] == pytest.approx(((52 + 44) / 2 - 45 + (53 + 43) / 2 - 46) / 2)  # +2.5
    assert gu["diff_en"] == pytest.approx(-0.5)
    assert gu["t_low"] < gu["diff_avg"] < gu["t_high"] and gu["boot_low"] <= gu["diff_avg"] <= gu["boot_high"]
    assert "| e5 | gu | 2 | +2.50 |" in md


def test_two_sweeps_compared_by_label_on_shared_languages(tmp_path, capsys):
    """LABEL=DIR keeps two sweeps of the same schedules apart (standard vs standard-stack, paired by seed), and
    --languages compares runs evaluated on different language sets on the ones they share."""
    for root, shift, langs in (("plain", 0.0, dict(ar=50.0, de=60.0, sw=40.0)), ("stack", 2.0, dict(ar=53.0, sw=41.0))):
        for seed in (1, 2):
            run = tmp_path / root / "xnli-standard" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps(dict(task="xnli", model="e5", schedule="standard", seed=seed)))
            write_results(run, 80.0 + shift + seed, split="dev", **{k: v + seed for k, v in langs.items()})
    text = aggregate.aggregate([tmp_path / "plain", f"stack={tmp_path / 'stack'}"], split="dev", languages=["ar", "sw"])
    # Δ average over ar, sw: ((53 + 41) - (50 + 40)) / 2 = +2.00 in both seeds (ar +3, sw +1); Δ English +2.00
    assert "| e5 | standard-stack | 2 | +2.00 | [+2.00, +2.00] | [+1.00, +3.00] | +2.00 |" in text
    assert aggregate.main([str(tmp_path / "plain"), f"stack={tmp_path / 'stack'}", "--split", "dev"]) == 0
    assert aggregate.main([str(tmp_path / "plain"), "--split", "dev", "--languages", "ar,zh"]) == 2
    assert "no results for zh" in capsys.readouterr().err


def test_lora_runs_are_methods_of_their_own_and_pair_with_bottleneck_runs_by_seed(tmp_path, capsys):
    """A LoRA sweep root and a bottleneck one, aggregated together: `standard-lora` is its own row, paired by seed
    with `standard`; within the LoRA root alone, `--paired standard-lora` compares its schedules, and the Lowest
    column is standard-lora's lowest language, as standard's is in the paper's Table 2."""
    def fake(root, name, adapter, seed, de, sw):
        run = root / f"xnli-{name}" / f"seed{seed}"
        run.mkdir(parents=True)
        config = dict(task="xnli", model="../shared/models/multilingual-e5-small", seed=seed, schedule=name)
        (run / "config.json").write_text(json.dumps(dict(config, **({"adapter": adapter} if adapter else {}))))
        write_results(run, en=80.0, split="dev", de=de, sw=sw)

    lora, bottleneck = tmp_path / "lora", tmp_path / "bottleneck"
    for seed, shift in ((1, 0.0), (2, 1.0)):
        fake(bottleneck, "standard", None, seed, 50 + shift, 40)  # saved before configs named their adapter
        fake(lora, "standard", "lora", seed, 52 + shift, 41)
        fake(lora, "gu", "lora", seed, 53 + shift, 43)
        fake(lora, "fun", "lora", seed, 45, 60)  # its own lowest language is de, standard-lora's is sw
    assert aggregate.main([str(lora), str(bottleneck), "--split", "dev"]) == 0
    md = capsys.readouterr().out
    assert "| multilingual-e5-small | standard-lora | 2 | +1.50 |" in md  # ((52-50) + (41-40)) / 2, both seeds
    assert "| multilingual-e5-small | gu-lora | 2 | +3.00 |" in md
    assert aggregate.main([str(lora), "--split", "dev", "--paired", "standard-lora"]) == 0
    md = capsys.readouterr().out
    assert "| multilingual-e5-small | gu-lora | 2 | +1.50 |" in md
    assert "| multilingual-e5-small | fun-lora | 1,2 | 80.00 ± 0.00 | sw 60.00 ± 0.00 |" in md
    assert "standard-lora row is lowest" in md


def test_madx_benchmark_refuses_to_start_without_adapter_weights(tmp_path):
    """Git keeps the benchmark's JSON, not its weights: on a clean checkout the task sweep must say how to reproduce
    (a fresh ROOT) instead of failing inside train.py; a wrong stage is a usage error."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "madx_benchmark.sh"
    (tmp_path / "data" / "text").mkdir(parents=True)  # the script lists the text files first: any will do
    (tmp_path / "data" / "text" / "en.txt").write_text("a line\n")
    env = dict(os.environ, PYTHON=sys.executable, ROOT=str(tmp_path / "madx"), DATA=str(tmp_path / "data"))
    for stage in ("sweep", "check"):
        done = subprocess.run(["bash", str(script), stage], env=env, capture_output=True, text=True)
        assert done.returncode == 1, done.stderr
        assert "has no adapter.safetensors" in done.stderr and "ROOT=runs/madx" in done.stderr
    done = subprocess.run(["bash", str(script), "sweeep"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash experiments/madx_benchmark.sh" in done.stderr
    assert not (tmp_path / "madx").exists()
