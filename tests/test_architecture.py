"""How the package is put together: no import cycles, light commands stay light, one manifest."""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_vggres"
REPO = PACKAGE.parent


def _module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path, name, modules):
    """Every keras_vggres module `path` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` imports a.b.c's module
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("keras_vggres"):
                found.add(target)
    return found


def _graph():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    for name in graph:  # importing a.b.c runs a/__init__ and a/b/__init__ first: not an edge
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles (imports inside functions count too):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_architecture_tables_and_vocabulary_are_keras_free():
    graph = _graph()
    leaves = ("keras_vggres.models.specs", "keras_vggres.transforms", "keras_vggres._checks",
              "keras_vggres._atomic", "keras_vggres.weights.manifest")
    code = "import sys\n" + "".join(f"import {m}\n" for m in leaves) + (
        "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert "keras_vggres.imagenet" not in graph["keras_vggres.weights.manifest"]


@pytest.mark.parametrize("argv", [["models"], ["weights"], ["weights", "resnet50"],
                                  ["verify"], ["--help"], ["--version"], ["download", "--help"]])
def test_light_commands_never_import_tensorflow_or_keras(argv, tmp_path):
    code = ("import sys\nfrom keras_vggres import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('keras', 'tensorflow') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, KERAS_HOME=str(tmp_path)))
    elapsed = time.perf_counter() - start
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "tensorflow" not in proc.stderr.lower() and "I0000" not in proc.stderr
    assert elapsed < 5  # well under a second on an idle machine; generous under a loaded CI


def test_the_packaged_manifest_is_a_real_file_equal_to_the_top_level_one():
    packaged = PACKAGE / "weights_manifest.json"
    assert packaged.is_file() and not packaged.is_symlink()
    assert packaged.read_bytes() == (REPO / "weights_manifest.json").read_bytes()
