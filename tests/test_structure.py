"""`fun/` is an importable library: no import cycles, and nothing of the command line (argparse, the scripts).
The product (`fun/` and the scripts) does not depend on `experiments/`, which only uses it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "evaluate", "fisher", "prefetch", "cli", "experiments"}
PRODUCT = [*sorted((ROOT / "fun").rglob("*.py")), *(ROOT / f"{name}.py" for name in ("train", "evaluate", "fisher", "prefetch", "cli"))]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_fun_has_no_import_cycles_and_no_command_line():
    modules = {module_name(p): p for p in (ROOT / "fun").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = imports(path)
        assert "argparse" not in found, f"{name} imports argparse"
        assert not {m.split(".")[0] for m in found} & SCRIPTS, f"{name} imports a script"
        graph[name] = {m for m in found if m in modules and m != name}
    # a module imports its package's __init__ implicitly; `fun.tasks` → `fun.tasks.xnli` → `fun.tasks.base` is fine
    visiting, done = [], set()

    def visit(node):
        assert node not in visiting, "import cycle: " + " → ".join(visiting[visiting.index(node):] + [node])
        if node in done:
            return
        visiting.append(node)
        for dep in graph[node]:
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_the_product_does_not_import_experiments():
    """The paper's configurations live in fun/presets.py; experiments/ (sweeps, tables) builds on the product,
    never the other way round."""
    assert len(PRODUCT) > 20 and all(path.is_file() for path in PRODUCT)
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imports(path) if m.split(".")[0] == "experiments")
                 for path in PRODUCT}
    assert not {path: found for path, found in offenders.items() if found}, "the product imports experiments/"


def test_readme_reading_order_states_the_real_sizes():
    """The README's reading order gives file and function lengths; they must be the code's, not last month's."""
    import re

    text = (ROOT / "README.md").read_text()
    order = text[text.index("Read the code in this order"):text.index("In each Transformer layer's output block")]
    files = re.findall(r"`(fun/[\w/]+\.py)` \((\d+)", order)
    assert len(files) == 3, files
    for name, lines in files:
        assert int(lines) == len((ROOT / name).read_text().splitlines()), name
    train_fn = next(n for n in ast.parse((ROOT / "train.py").read_text()).body
                    if isinstance(n, ast.FunctionDef) and n.name == "train")
    loop = next(n for n in train_fn.body if isinstance(n, ast.While))
    stated = re.search(r"`train\(\)` \((\d+) lines\), with Algorithm 1's loop in (\d+)", order)
    assert stated and (int(stated[1]), int(stated[2])) == (train_fn.end_lineno - train_fn.lineno + 1,
                                                            loop.end_lineno - loop.lineno + 1)
