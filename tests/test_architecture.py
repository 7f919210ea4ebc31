"""The package's layers: who may import whom, no import cycles, and plain pieces free of Lightning.

Layers, lowest first (a module may import its own layer and the ones below, never above):

0. ``fskd.data``: file formats, datasets, degradation, the DataModule and its sampler;
1. ``fskd.models``, ``fskd.losses``: networks, checkpoint loading of networks, distillation losses;
2. ``fskd.evaluation``: verification and identification;
3. ``fskd.systems``, ``fskd.callbacks``, ``fskd.checkpoint_io``: LightningModules, callbacks, checkpoint IO;
4. ``fskd.commands``: one module per command;
5. ``fskd.cli``, ``fskd.__main__``: the command table.

Imports inside functions count, and so do module names written as strings that load code (``importlib.import_module``,
the command table, ``class_path`` defaults).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fskd"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("fskd.data",),
    ("fskd.models", "fskd.losses"),
    ("fskd.evaluation",),
    ("fskd.systems", "fskd.callbacks", "fskd.checkpoint_io"),
    ("fskd.commands",),
    ("fskd.cli", "fskd.__main__"),
)

#: Modules that Lightning-free code must never load (directly or through another module).
TRAINING_STACK = ("lightning", "pytorch_lightning", "torchmetrics")

#: Layer-0..2 modules that are Lightning glue by design.
LIGHTNING_GLUE = {"fskd.data.datamodule"}

MODULE_STRING = re.compile(r"fskd(\.[A-Za-z_]\w*)+")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _resolve(name: str) -> str | None:
    """The fskd module a dotted name refers to (a module, or an attribute of one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _import_strings(tree: ast.Module) -> set[int]:
    """Strings that name code to load: a call's first argument (``import_module("...")``, the command
    table's ``Command("...")``) and ``class_path`` values."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            ids.add(id(node.args[0]))
        elif isinstance(node, ast.Dict):
            ids.update(id(v) for k, v in zip(node.keys, node.values, strict=True)
                       if isinstance(k, ast.Constant) and k.value == "class_path")
    return ids


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(fskd modules, top-level third-party packages) that ``module`` imports anywhere in its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()
    loaded_by_name = _import_strings(tree)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            # "from fskd.models import loading" names a submodule; "from fskd.models import X" the package.
            names = [n for n in names if n == base or n in MODULES]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) in loaded_by_name
              and MODULE_STRING.fullmatch(node.value)):
            names = [node.value]
        for name in names:
            if name.split(".")[0] == "fskd":
                target = _resolve(name)
                if target is not None and target != module:
                    internal.add(target)
            elif name:
                external.add(name.split(".")[0])
    return internal, external


GRAPH = {module: imports_of(module)[0] for module in MODULES}


def test_every_module_belongs_to_a_layer() -> None:
    homeless = [m for m in MODULES if m != "fskd" and _layer(m) is None]
    assert not homeless, f"modules outside the layers of {__name__}: {homeless}"


def test_no_module_imports_a_higher_layer() -> None:
    violations = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                  for m, targets in GRAPH.items() if m != "fskd"
                  for t in sorted(targets) if t != "fskd" and _layer(t) > _layer(m)]
    assert not violations, "\n".join(violations)


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_plain_layers_never_import_the_training_stack_in_their_code() -> None:
    offenders = {m: sorted(e & set(TRAINING_STACK)) for m in MODULES if m not in LIGHTNING_GLUE
                 and _layer(m) is not None and _layer(m) <= 2 for e in [imports_of(m)[1]] if e & set(TRAINING_STACK)}
    assert not offenders


def test_the_cycle_check_sees_string_and_function_level_imports(tmp_path: Path) -> None:
    """The checker itself: the command table's strings and imports inside functions are edges."""
    assert "fskd.commands.demo" in GRAPH["fskd.cli"]  # only written as a string in COMMANDS
    assert "fskd.commands.lightning" in GRAPH["fskd.commands.demo.evaluation"]  # imported inside a function


@pytest.mark.parametrize("statement", [
    "import fskd.models, fskd.losses, fskd.evaluation.verification, fskd.data.recordio, fskd.data.binfile; "
    "from fskd.models import load_backbone",
    "import fskd.evaluation, fskd.evaluation.identification, fskd.data.layouts, fskd.data.sources, "
    "fskd.data.synthetic, fskd.models.export",
    "import fskd.cli; fskd.cli.main(['--help'])",
])
def test_plain_pieces_load_without_lightning_or_torchmetrics(statement: str) -> None:
    check = (f"import sys; {statement}; "
             f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r}); "
             "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_docs_page_the_code_cites_exists() -> None:
    root = PACKAGE.parent
    cited = {(path.relative_to(root).as_posix(), page)
             for folder in ("fskd", "benchmarks", "tests") for path in (root / folder).rglob("*.py")
             for page in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    cited |= {("README.md", page) for page in re.findall(r"docs/[\w-]+\.md", (root / "README.md").read_text())}
    missing = sorted((source, page) for source, page in cited if not (root / page).is_file())
    assert cited and not missing


@pytest.mark.parametrize("class_path", ["fskd.systems.TeacherModule", "fskd.systems.DistillModule",
                                        "fskd.systems.teacher.TeacherModule", "fskd.systems.distill.DistillModule"])
def test_class_paths_in_earlier_checkpoints_still_import(class_path: str) -> None:
    """Checkpoints written before the restructuring name their system by these paths (``_class_path`` in the
    hyper-parameters; callbacks and the DataModule are keyed by class name only). One written by commit bba6985
    was validated, resumed and used as a teacher after it."""
    import importlib

    module, _, name = class_path.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type)


def test_help_of_fskd_and_of_every_tool_answers_without_lightning() -> None:
    from fskd.cli import COMMANDS

    tools = [name for name, command in COMMANDS.items() if not command.lightning]
    assert set(tools) >= {"synth", "synth-tinyface", "prepare", "identify", "export", "demo"}
    check = ("import contextlib, io, sys\n"
             "from fskd.cli import main\n"
             f"for name in {tools!r}:\n"
             "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
             "        main([name, '--help'])\n"
             "    assert out.getvalue().startswith(f'usage: fskd {name}'), (name, out.getvalue()[:200])\n"
             f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r})\n"
             "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fskd"):
                offenders += [f"{module}: {alias.name} from {node.module}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not offenders, offenders
