"""docs/walkthrough.md runs as written: its ```python blocks, executed in order in one namespace (as a reader
pasting them into Python would), pass their own asserts. Shell blocks (step 6, the real run) are not run.

Each block is compiled with the markdown's file name and line numbers, so a failure points into the document.
"""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


def test_walkthrough_blocks_run_in_order():
    text = WALKTHROUGH.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 5, "expected the python blocks of steps 1-5"
    namespace = {"__name__": "walkthrough"}
    threads = torch.get_num_threads()
    try:
        for line, code in blocks:
            assert "assert " in code, f"{WALKTHROUGH.name}:{line}: a block must assert what its text claims"
            # leading newlines: tracebacks then carry the line numbers of the markdown file itself
            exec(compile("\n" * (line - 1) + code, str(WALKTHROUGH), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


def test_walkthrough_images_exist():
    text = WALKTHROUGH.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for image in images:
        assert (WALKTHROUGH.parent / image).is_file(), f"{WALKTHROUGH.name} embeds {image}, which is not in the repository"
