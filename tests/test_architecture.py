"""The shape of the library: who imports whom.

Read statically (``ast``), with imports inside functions counted too: a
lazy import is still a dependency. The command line sits on top: no library
module imports ``cli``, and the modules import each other without a cycle,
so each can be read, tested and reused from its own imports down.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import selmask_lib

PACKAGE_DIR = Path(selmask_lib.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in modules and target != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "selmask_lib.engine" in graph["selmask_lib.pretraining"]          # from .engine import ...
    assert "selmask_lib.data.embedded" in graph["selmask_lib.data"]       # lazy, inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_module_imports_the_command_line():
    importers = [name for name, imports in import_graph().items() if "selmask_lib.cli" in imports]
    assert importers == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # the package's own __init__ only holds the lazy public names; every module imports it for __version__
    graph = {name: imports - {"selmask_lib"} for name, imports in graph.items()}
    assert find_cycle(graph) is None


def test_importing_the_package_is_cheap_and_the_public_names_resolve():
    code = ("import sys, selmask_lib as sm; heavy = [m for m in ('torch', 'pandas') if m in sys.modules]; "
            "print(heavy); print(sm.pretrain_preset('smoke', 'synthetic').epochs); "
            "print(all(getattr(sm, name) is not None for name in sm.__all__))")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           timeout=300).stdout.split()
    assert lines == ["[]", "1", "True"]


def test_no_public_name_is_also_a_module_name():
    # `import selmask_lib.<module>` sets the package attribute <module> to the module: a public function of
    # the same name (say `pretrain` in pretrain.py) would turn into a module once that import happened.
    modules = {path.stem for path in PACKAGE_DIR.glob("*.py")} | {path.parent.name for path in
                                                                   PACKAGE_DIR.glob("*/__init__.py")}
    assert sorted(set(selmask_lib._EXPORTS) & modules) == []
    code = ("import selmask_lib as sm; sm.load_pretrain_run; sm.reproduce; import selmask_lib.finetuning; "
            "print(all(callable(f) and not hasattr(f, '__path__') for f in (sm.pretrain, sm.finetune, sm.reproduce)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.split() == ["True"]
