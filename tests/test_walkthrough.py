"""docs/walkthrough.md runs as written, prints what it shows, and quotes only numbers that a test checks.

* Every fenced block is accounted for: a ```python block runs (in order, in one namespace, as a reader pasting
  them into Python would) and must assert what its text claims; the ```output block right under it is what it
  prints, compared line by line (`...` stands for a run time, which varies); any other block must carry `not-run`
  in its info string (shell commands, formulas). Indented code blocks are refused, and the counts are exact, so a
  block cannot silently drop out of the test.
* Step 6's commands produce the committed runs in docs/figures/walkthrough/run-logs/ (their config.json), and every
  number in Step 6's prose appears in what its blocks print from those runs.
* The figures the walkthrough embeds are in the repository, and the command it states draws them.

Each block is compiled with the markdown's file name and line numbers, so a failure points into the document.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tiny import E5

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
FIGURES = ROOT / "docs" / "figures" / "walkthrough"
DRAW = "docs/figures/draw_walkthrough.py"

# The exact inventory: changing the walkthrough's blocks means changing these numbers, on purpose.
PYTHON_BLOCKS = 10
NOT_RUN_BLOCKS = 5
RUN_TIMES = 2  # `...` in output blocks: wall-clock times
IMAGES = 5


@dataclass
class Block:
    line: int   # line number of the block's first content line (1-based)
    end: int    # line number of its closing fence
    info: str   # the info string after the opening fence
    code: str   # the content, dedented by the fence's indentation

    @property
    def kind(self) -> str:
        words = self.info.split()
        if "not-run" in words:
            return "not-run"
        return words[0] if words else ""


FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text (backticks or tildes, at any indentation), in order."""
    lines, blocks, i = text.split("\n"), [], 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        indent, fence = len(m["indent"].expandtabs()), m["fence"]
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        assert end is not None, f"{WALKTHROUGH.name}:{i + 1}: a fence that is never closed"
        body = [l[indent:] if l[:indent].strip() == "" else l.lstrip() for l in lines[i + 1:end]]
        blocks.append(Block(i + 2, end + 1, m["info"].strip(), "\n".join(body) + "\n" if body else ""))
        i = end + 1
    return blocks


def indented_code_lines(text: str) -> list[int]:
    """Line numbers that open an indented (4-space) code block outside fences: those would be neither run nor marked."""
    fenced, inside, found = set(), None, []
    lines = text.split("\n")
    for n, line in enumerate(lines):
        m = FENCE_OPEN.match(line)
        if inside is None and m:
            inside = m["fence"]
        elif inside is not None and re.match(rf"^[ \t]*{re.escape(inside[0])}{{{len(inside)},}}[ \t]*$", line):
            inside = None
            fenced.add(n)
        if inside is not None:
            fenced.add(n)
    for n, line in enumerate(lines):
        if n in fenced or not line.strip() or not (line.startswith("    ") or line.startswith("\t")):
            continue
        previous = lines[n - 1] if n else ""
        if not previous.strip():  # a paragraph break followed by indentation: CommonMark's indented code block
            found.append(n + 1)
    return found


def matches(expected: str, actual: str) -> bool:
    """Line-by-line equality, trailing spaces ignored; `...` in an expected line matches any text."""
    exp, act = expected.rstrip("\n").split("\n"), actual.rstrip("\n").split("\n")
    if len(exp) != len(act):
        return False
    for e, a in zip(exp, act):
        pattern = ".*".join(re.escape(part) for part in e.rstrip().split("..."))
        if not re.fullmatch(pattern, a.rstrip()):
            return False
    return True


def step_text(text: str, number: int) -> str:
    start = text.index(f"\n## Step {number}:")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


@pytest.fixture(scope="module")
def text() -> str:
    return WALKTHROUGH.read_text()


def test_every_block_is_run_or_marked_and_the_counts_are_exact(text):
    blocks = fenced_blocks(text)
    unknown = [f"line {b.line}: ```{b.info}" for b in blocks if b.kind not in ("python", "output", "not-run")]
    assert not unknown, f"fenced blocks that are neither run nor marked not-run: {unknown}"
    assert not indented_code_lines(text), f"indented code blocks (use a fence) at lines {indented_code_lines(text)}"
    kinds = [b.kind for b in blocks]
    assert kinds.count("python") == PYTHON_BLOCKS and kinds.count("not-run") == NOT_RUN_BLOCKS
    # each python block is followed directly by its output, and an output block follows a python block
    lines = text.split("\n")
    for i, b in enumerate(blocks):
        if b.kind == "python":
            assert i + 1 < len(blocks) and blocks[i + 1].kind == "output", f"line {b.line}: no ```output under it"
            between = lines[b.end:blocks[i + 1].line - 2]
            assert not "".join(between).strip(), f"line {b.line}: text between the block and its output"
        if b.kind == "output":
            assert i > 0 and blocks[i - 1].kind == "python", f"line {b.line}: an output block under no python block"
    assert sum(b.code.count("...") for b in blocks if b.kind == "output") == RUN_TIMES


def test_fence_parser_sees_every_kind_of_fence():
    """The inventory above relies on this: tilde fences, indented fences and other tags are all found."""
    sample = "a\n```py\nx = 1\n```\n- item\n\n  ```python\n  y = 2\n  ```\n~~~\nz\n~~~\n````text not-run\n```\n````\n"
    blocks = fenced_blocks(sample)
    assert [(b.kind, b.code) for b in blocks] == [("py", "x = 1\n"), ("python", "y = 2\n"), ("", "z\n"),
                                                   ("not-run", "```\n")]
    assert indented_code_lines("text\n\n    code\n") == [3] and indented_code_lines("- a\n  b\n") == []
    assert matches("took ... ms\nok", "took 12.5 ms\nok") and not matches("a 1", "a 2") and not matches("a", "a\nb")


def test_walkthrough_blocks_run_in_order_and_print_what_they_show(text, monkeypatch):
    monkeypatch.chdir(ROOT)  # the reader starts Python in the repository root
    blocks = fenced_blocks(text)
    namespace = {"__name__": "walkthrough"}
    threads = torch.get_num_threads()
    try:
        for b, shown in zip(blocks, blocks[1:]):
            if b.kind != "python":
                continue
            assert "assert " in b.code, f"{WALKTHROUGH.name}:{b.line}: a block must assert what its text claims"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                # leading newlines: tracebacks then carry the line numbers of the markdown file itself
                exec(compile("\n" * (b.line - 1) + b.code, str(WALKTHROUGH), "exec"), namespace)
            assert matches(shown.code, printed.getvalue()), (f"{WALKTHROUGH.name}:{shown.line}: the block prints\n"
                                                            f"{printed.getvalue()}\nbut the page shows\n{shown.code}")
    finally:
        torch.set_num_threads(threads)


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block, with its VAR=value assignments substituted and continuation lines joined."""
    variables, commands = {}, []
    for line in code.replace("\\\n", " ").split("\n"):
        line = line.split(" #")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if m:
            variables[m[1]] = " ".join(shlex.split(re.sub(r"\$(\w+)", lambda v: variables[v[1]], m[2])))
            continue
        commands.append(shlex.split(re.sub(r"\$(\w+)", lambda v: variables[v[1]], line)))
    return commands


@pytest.mark.skipif(not E5.is_dir(), reason=f"the walkthrough's model {E5} absent (fresh clone without ../shared)")
def test_step6_commands_made_the_committed_runs(text):
    """The training commands of Step 6, parsed by train.py, give the settings the committed runs recorded (up to
    those that do not change what a run computes: output directory, threads, progress bar, ...)."""
    import train
    from fun.config import RESUMABLE, resolve

    commands = [c for b in fenced_blocks(step_text(text, 6)) if b.kind == "not-run" and "train.py" in b.code
                for c in shell_commands(b.code) if c[:2] == ["python", "train.py"]]
    assert [c[c.index("--schedule") + 1] for c in commands] == ["standard", "gu", "fun"]
    for argv in commands:
        cfg = resolve(train.parse_config(argv[2:])).to_dict()
        name = Path(cfg["output_dir"]).name
        committed = json.loads((FIGURES / "run-logs" / name / "config.json").read_text())
        # settings added since the runs are not in their config.json; every recorded one must match
        differ = {k: (v, committed[k]) for k, v in cfg.items() if k in committed and k not in RESUMABLE
                  and committed[k] != v}
        assert not differ, f"Step 6's {name} command differs from the committed run: {differ}"
        for file in ("log.jsonl", "schedule.json"):
            assert (FIGURES / "run-logs" / name / file).is_file()


PAPER_REFERENCE = re.compile(r"(§|Table |Tables |Fig\. |Figs\. |Eq\. |footnote |App\. |Algorithm |line |lines )"
                             r"[\d.–\-, ]*\d")


def test_every_number_in_step6_prose_is_printed_from_the_committed_runs(text):
    step = step_text(text, 6)
    blocks = fenced_blocks(step)
    shown = "\n".join(b.code for b in blocks)
    prose = re.sub(r"(`{3,}|~{3,}).*?\n[ \t]*\1[ \t]*\n", "", step, flags=re.S)  # the fenced blocks out
    prose = re.sub(r"!\[[^\]]*\]\([^)]*\)|`[^`]*`", "", prose)  # images and inline code out
    prose = PAPER_REFERENCE.sub("", prose)
    numbers = re.findall(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?", prose)
    assert len(numbers) >= 10, "Step 6 should discuss the runs' numbers"
    missing = sorted({n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", shown)})
    assert not missing, f"numbers in Step 6's prose that none of its blocks print: {missing}"


def test_walkthrough_images_exist_and_the_stated_command_draws_them(text, tmp_path):
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == IMAGES
    for image in images:
        assert (WALKTHROUGH.parent / image).is_file(), f"{WALKTHROUGH.name} embeds {image}, not in the repository"
    assert f"python {DRAW}" in text, "the walkthrough must say how its figures are drawn"
    done = subprocess.run([sys.executable, str(ROOT / DRAW), "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == sorted(Path(i).name for i in images) == sorted(p.name for p in FIGURES.glob("*.png"))
