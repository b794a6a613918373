"""The package layout holds: models/ never imports utils/, importing a config or the packages changes
nothing, the command lines share one sys.path idiom and run both ways, and no module-level import
cycle exists."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

CLIS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "utils"))  # the top-level utils/*.py that run
              if f.endswith(".py") and "__main__" in open(os.path.join(ROOT, "utils", f)).read())
SYS_PATH_IDIOM = (
    'if __package__ in (None, ""):  # run as a file, not with -m: see utils/entry.py\n'
    "    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
)
JITTOR_DEFAULTS = ("use_cutlass", "FIX_TORCH_ERROR", "nvcc_path")


def python_files(*folders):
    """Repository-relative paths of the .py files under `folders`."""
    found = []
    for folder in folders:
        for parent, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found += [os.path.relpath(os.path.join(parent, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def module_name(path):
    parts = path[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, top_level_only=False):
    """Absolute names of the modules `path` imports (all of them, or only those run at import time)."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    package = module_name(path) if path.endswith("__init__.py") else module_name(path).rpartition(".")[0]
    nodes = ast.walk(tree)
    if top_level_only:  # statements outside functions and classes, including those under if/try
        nodes, stack = [], list(tree.body)
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                stack += node.body + node.orelse + getattr(node, "finalbody", []) + [
                    s for h in getattr(node, "handlers", []) for s in h.body]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `.x` from package a.b is a.b.x, `..x` is a.x
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_models_never_import_utils():
    offenders = {path: sorted(n for n in imported_modules(path) if n == "utils" or n.startswith("utils."))
                 for path in python_files("models")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_configs_and_packages_changes_nothing():
    configs = [module_name(p) for p in python_files("local_configs") if not p.endswith("__init__.py")]
    probe = (
        "import importlib, os, sys\n"
        "environ, hooks, path = dict(os.environ), list(sys.meta_path), list(sys.path)\n"
        f"for name in {configs!r} + ['models', 'models.registry', 'utils', 'utils.entry']:\n"
        "    importlib.import_module(name)\n"
        "assert dict(os.environ) == environ, set(os.environ.items()) ^ set(environ.items())\n"
        "assert sys.meta_path == hooks, sys.meta_path\n"
        "assert sys.path == path, sys.path\n"
        "assert 'jittor' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in JITTOR_DEFAULTS}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def touches_sys_path(path):
    """Whether the code of `path` (not its docstrings) uses `sys.path`."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id == "sys" for node in ast.walk(tree))


def test_only_the_command_lines_touch_sys_path_all_with_the_same_lines():
    assert set(CLIS) >= {"train", "eval", "infer", "latency", "export_onnx"}
    for name in CLIS:
        source = open(os.path.join(ROOT, "utils", f"{name}.py")).read()
        assert SYS_PATH_IDIOM in source and source.count("sys.path") == 1, name
    clis = {os.path.join("utils", f"{name}.py") for name in CLIS}
    others = [p for p in python_files("models", "local_configs", "utils") if p not in clis] + ["benchmark.py"]
    assert [path for path in others if touches_sys_path(path)] == []


def test_kernels_live_in_models_kernels():
    """The CPU kernels (`jt.code`) are in models/kernels/; the rest of models/ only calls them."""
    elsewhere = [p for p in python_files("models") if not p.startswith(os.path.join("models", "kernels"))
                 and "jt.code(" in open(os.path.join(ROOT, p)).read()]
    assert elsewhere == []


@pytest.mark.parametrize("name", CLIS)
def test_command_lines_run_as_files_and_as_modules(name):
    for command in ([os.path.join("utils", f"{name}.py")], ["-m", f"utils.{name}"]):
        done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "--config" in done.stdout, done.stderr[-2000:]


def test_no_import_cycles():
    paths = python_files("models", "utils", "local_configs") + ["benchmark.py"]
    ours = {module_name(p): p for p in paths}
    assert find_cycles(import_graph(ours)) == []
    # modules, any import, also inside functions: a cycle there is still two modules that need each other
    anywhere = {name: {m for m in imported_modules(path) if m in ours and m != name and not name.startswith(m + ".")}
                for name, path in ours.items()}
    assert find_cycles(anywhere) == []
    packages = {}  # models, utils, local_configs, benchmark: any import, also inside functions
    for name, path in ours.items():
        for imported in imported_modules(path):
            if imported.split(".")[0] in {n.split(".")[0] for n in ours} - {name.split(".")[0]}:
                packages.setdefault(name.split(".")[0], set()).add(imported.split(".")[0])
    assert find_cycles(packages) == []


def import_graph(ours):
    """{module: the modules of `ours` its import-time code runs}: `import a.b.c` runs a, a.b and
    a.b.c, except the packages the importing module is itself inside (already being imported)."""
    graph = {}
    for name, path in ours.items():
        targets = set()
        for imported in imported_modules(path, top_level_only=True):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                module, implicit = ".".join(parts[:i]), i < len(parts)
                if module in ours and module != name and not (implicit and name.startswith(module + ".")):
                    targets.add(module)
        graph[name] = targets
    return graph


def find_cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layout_changes(source):
    """(line, call) of each direct layout change or product in `source` that has a GPU-safe spelling
    in models/layout.py: `.permute(`, `.transpose(`, `.argmax(` (`jt.argmax` too) and `jt.matmul`.
    The ONNX rules (`onnx*` / `_onnx*` functions) write graph nodes, not Jittor ops: not read."""
    found, todo = [], [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_").startswith("onnx"):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if not isinstance(node, ast.Attribute):
            continue
        on_jt = isinstance(node.value, ast.Name) and node.value.id == "jt"
        if node.attr in ("permute", "transpose", "argmax") or (on_jt and node.attr == "matmul"):
            found.append((node.lineno, f"{'jt' if on_jt else '...'}.{node.attr}"))
    return sorted(found)


def test_model_code_changes_layouts_only_through_layout_py():
    """Off the CPU fast path Jittor runs a permute that moves the last axis, and its argmax, on the
    host (models/layout.py says why): the model code calls `layout.permute`, `layout.matmul` and
    `layout.argmax` instead. Only layout.py and the CPU kernels may call the stock ops."""
    probe = ("y = x.permute(0, 2, 1)\nz = jt.matmul(a, b)\ni = jt.argmax(x, 1)\nw = x.transpose(1, 2)\n# x.permute(0)\n"
             "def onnx(self, ex, x):\n    return ex.g.transpose(x, (0, 2, 1))\n")
    assert [line for line, _ in layout_changes(probe)] == [1, 2, 3, 4]
    allowed = {os.path.join("models", "layout.py")}
    offenders = {path: layout_changes(open(os.path.join(ROOT, path)).read()) for path in python_files("models")
                 if path not in allowed and not path.startswith(os.path.join("models", "kernels", ""))}
    assert {path: calls for path, calls in offenders.items() if calls} == {}
