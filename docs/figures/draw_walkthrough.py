"""Draw every figure of docs/walkthrough.md from code and committed data:

    python docs/figures/draw_walkthrough.py                  # → docs/figures/walkthrough/*.png
    python docs/figures/draw_walkthrough.py --out /tmp/figs  # anywhere else

* hooks.png: a Transformer layer's output block and the two hooks that turn it into MAD-X's (Step 1);
* unfreezing.png: what is trainable, per adapter layer and step, under each schedule (the paper's Fig. 1): drawn
  by fun.schedules itself, with FUN's order from the committed FUN run (Step 3);
* fisher_curves.png, schedules.png: `fisher.py plot` of the committed runs (the paper's Figs. 3 and 5, Step 6);
* fisher_layers.png: tr(F) of every adapter layer at every logged step of those runs, log scale (Step 6).

The runs are docs/figures/walkthrough/run-logs/{standard,gu,fun}: the config.json, log.jsonl, schedule.json and
summary.json of the commands in the walkthrough's Step 6.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

import fisher  # noqa: E402
from fun.schedules import SCHEDULES, unfreeze  # noqa: E402

FIGURES = ROOT / "docs" / "figures" / "walkthrough"
RUNS = FIGURES / "run-logs"
SCHEDULE_ORDER = ("standard", "gu", "fun")


def read_runs() -> dict[str, dict]:
    """config, log records and unfreeze events of each committed run."""
    runs = {}
    for name in SCHEDULE_ORDER:
        path = RUNS / name
        runs[name] = dict(config=json.loads((path / "config.json").read_text()),
                          records=[json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()],
                          events=json.loads((path / "schedule.json").read_text()))
    return runs


# --- Step 1: the output block and its two hooks --------------------------------------------------------------------

def draw_hooks(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.set(xlim=(0, 12.2), ylim=(0.1, 6.3))
    ax.axis("off")

    def box(x, y, w, h, text, color, size=10):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.12", fc=color,
                                    ec="black", lw=1.1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)

    def arrow(start, end, color="black", style="-|>", **kw):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=13, color=color, lw=1.4, **kw))

    def badge(x, y, label, color):
        ax.add_patch(matplotlib.patches.Circle((x, y), 0.2, fc=color, ec="none", zorder=5))
        ax.text(x, y, label, ha="center", va="center", fontsize=10, color="white", fontweight="bold", zorder=6)

    # the output block (BertOutput, XLMRobertaOutput, DebertaV2Output), called as output(ffn, x)
    ax.add_patch(FancyBboxPatch((1.75, 2.0), 9.15, 2.5, boxstyle="round,pad=0.1", fc="#f4f4f4", ec="#888888",
                                lw=1, ls="--"))
    ax.text(1.9, 4.3, "output block, called as output(ffn, x): LN(dropout(dense(ffn)) + x)", fontsize=9.5,
            color="#555555", va="center")
    ax.text(0.55, 3.0, "ffn", ha="center", va="center", fontsize=11)
    ax.text(0.55, 2.6, "(B, T, 4d)", ha="center", va="center", fontsize=8, color="#555555")
    box(2.1, 2.6, 1.4, 0.8, "dense", "#ffffff")
    box(4.1, 2.6, 1.4, 0.8, "dropout", "#ffffff")
    box(6.3, 2.4, 2.2, 1.2, "h + f(LN(h + x))", "#ffe2b8")
    box(9.1, 2.6, 1.5, 0.8, "LN(· + x)", "#ffffff")
    ax.text(11.65, 3.0, "out", ha="center", va="center", fontsize=11)
    arrow((0.95, 3.0), (2.05, 3.0))
    arrow((3.55, 3.0), (4.05, 3.0))
    arrow((5.55, 3.0), (6.25, 3.0))
    ax.text(5.9, 3.12, "h", ha="center", fontsize=11, style="italic")
    arrow((8.55, 3.0), (9.05, 3.0))
    arrow((10.65, 3.0), (11.35, 3.0))
    ax.text(7.4, 2.15, "f(z) = W_up · relu(W_down · z + b_down) + b_up", fontsize=8.5, color="#8a5a00", ha="center")

    # x: the attention output, the block's second argument; the residual connection carries it to LN(· + x)
    ax.text(0.25, 5.55, "x = attention output (B, T, d)", fontsize=10, va="center")
    arrow((0.55, 5.35), (0.55, 5.05), style="-")
    ax.plot([0.55, 9.85], [5.0, 5.0], color="#1f77b4", lw=1.4)
    arrow((9.85, 5.0), (9.85, 3.45), color="#1f77b4")
    ax.text(9.95, 4.75, "residual", fontsize=8.5, color="#1f77b4")
    arrow((7.4, 5.0), (7.4, 3.65), color="#1f77b4", ls=":")
    ax.text(7.5, 4.75, "x, as kept by (1)", fontsize=8.5, color="#1f77b4")

    # where the hooks act
    badge(1.75, 5.0, "1", "#1f77b4")
    badge(5.9, 2.65, "2", "#d62728")
    ax.text(0.25, 1.35, "(1) forward pre-hook on the block: sees its arguments (ffn, x) and keeps x",
            fontsize=9.5, color="#1f77b4")
    ax.text(0.25, 0.9, "(2) forward hook on the block's dropout: sees h and returns h + f(LN(h + x)) in its place "
                       "(madx_output)", fontsize=9.5, color="#d62728")
    ax.text(0.25, 0.45, "The block's own code then computes LN(· + x); dense runs once. A Stack repeats the step "
                        "per adapter, with the same frozen LN.", fontsize=9, color="#555555")
    fig.tight_layout()
    fig.savefig(out / "hooks.png", dpi=120)
    plt.close(fig)


# --- Step 3: the trainable set per layer and step ------------------------------------------------------------------

def trainable_grid(name: str, num_layers: int, k: int, total: int, seed: int, fun_order: list[int]) -> np.ndarray:
    """(L, N + 1) booleans: adapter j trainable during step i (column 0: the starting set), by fun.schedules."""
    schedule = SCHEDULES[name]
    trainable = set(schedule.initial(num_layers, ()))
    grid = np.zeros((num_layers, total + 1), dtype=bool)
    grid[sorted(trainable), 0] = True
    chosen_by_fun = iter(fun_order)

    def replay_fun() -> dict[int, float]:  # FUN's SELECT needs tr(F): the committed run's choice scores highest
        choice = next(chosen_by_fun)
        return {j: float(j == choice) for j in range(num_layers)}

    for step in range(1, total + 1):
        chosen, _ = unfreeze(schedule, step, k, trainable, num_layers, seed=seed, fisher=replay_fun)
        trainable |= set(chosen)
        grid[sorted(trainable), step] = True
    return grid


def draw_unfreezing(runs: dict[str, dict], out: Path) -> None:
    config = runs["fun"]["config"]
    num_layers, k, total, seed = config["num_layers"], config["k"], config["total_steps"], config["seed"]
    fun_order = [j for e in runs["fun"]["events"] for j in e["layers"]]
    names = ("standard", "lpft", "gu", "rand", "fun")
    fig, axes = plt.subplots(1, len(names), figsize=(12.5, 3.6), sharey=True)
    for ax, name in zip(axes, names):
        grid = trainable_grid(name, num_layers, k, total, seed, fun_order)
        ax.imshow(grid, origin="lower", aspect="auto", cmap=matplotlib.colors.ListedColormap(["#eeeeee", "#2b7bba"]),
                  extent=(-0.5, total + 0.5, -0.5, num_layers - 0.5), interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(name if name != "fun" else "fun (the committed run)", fontsize=10)
        ax.set_xlabel("step i")
        ax.set_xticks(range(0, total + 1, 2 * k))
        for i in range(k, k * num_layers + 1, k):
            ax.axvline(i - 0.5, color="white", lw=0.4)
    axes[0].set_ylabel("adapter layer (0 = bottom)")
    axes[0].set_yticks(range(num_layers))
    fig.suptitle(f"Trainable adapters (blue) per step: L = {num_layers}, k = {k}, N = {total}; "
                 "the head C trains at every step", fontsize=10.5)
    fig.tight_layout()
    fig.savefig(out / "unfreezing.png", dpi=120)
    plt.close(fig)


# --- Step 6: the runs ----------------------------------------------------------------------------------------------

def draw_run_plots(out: Path) -> None:
    """fisher.py plot, the command a reader runs on their own runs; keep its Fig. 3 and Fig. 5."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = ["plot", *(str(RUNS / name) for name in SCHEDULE_ORDER), "--out", scratch, "--window", "1"]
        with contextlib.redirect_stdout(io.StringIO()):  # it lists what it wrote into the scratch directory
            if fisher.main(argv) != 0:
                raise SystemExit("fisher.py plot failed")
        for name in ("fisher_curves.png", "schedules.png"):
            shutil.copy(Path(scratch) / name, out / name)


def draw_fisher_layers(runs: dict[str, dict], out: Path) -> None:
    """Per layer: what standard and GU logged every --fisher-every steps, and the tr(F) by which FUN chose."""
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4.1), sharey=True)
    every = {name: run["config"]["fisher_every"] for name, run in runs.items()}
    panels = [("standard", f"standard: logged every {every['standard']} steps", runs["standard"]["records"]),
              ("gu", f"gu: logged every {every['gu']} steps", runs["gu"]["records"]),
              ("fun", "fun: the tr(F) that chose each unfreeze", runs["fun"]["events"])]
    for ax, (name, title, rows) in zip(axes, panels):
        rows = [r for r in rows if "fisher" in r]
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(rows)))
        trainable = set(SCHEDULES[name].initial(runs[name]["config"]["num_layers"], ()))
        for r, color in zip(rows, colors):
            layers = sorted(int(j) for j in r["fisher"])
            value = {j: r["fisher"][str(j)] for j in layers}
            if "trainable" in r:  # a log line: S after this step's SELECT
                trainable = set(r["trainable"])
            ax.plot(layers, [value[j] for j in layers], color=color, lw=1.1, label=f"step {r['step']}")
            frozen = [j for j in layers if j not in trainable]
            ax.scatter(frozen, [value[j] for j in frozen], s=16, facecolors="white", edgecolors=color, zorder=3)
            ax.scatter(sorted(trainable), [value[j] for j in sorted(trainable)], s=16, color=color, zorder=3)
            if "layers" in r:  # an unfreeze event of FUN: mark the layer it chose, then it is trainable
                ax.scatter(r["layers"], [value[j] for j in r["layers"]], s=90, marker="*", color="#d62728", zorder=4)
                trainable |= set(r["layers"])
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("adapter layer (0 = bottom)")
        ax.set_xticks(range(runs[name]["config"]["num_layers"]))
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    axes[0].set_ylabel("tr(F) of the layer's adapter (log scale)")
    fig.suptitle("tr(F) per adapter layer (filled: trainable, hollow: frozen; red star: the layer FUN unfroze)",
                 fontsize=10.5)
    fig.tight_layout()
    fig.savefig(out / "fisher_layers.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(FIGURES), help="directory for the PNG files")
    out = Path(parser.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    runs = read_runs()
    draw_hooks(out)
    draw_unfreezing(runs, out)
    draw_run_plots(out)
    draw_fisher_layers(runs, out)
    for path in sorted(out.glob("*.png")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
