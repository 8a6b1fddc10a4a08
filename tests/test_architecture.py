"""The house rules that a reviewer would otherwise have to check by reading every file.

* Dependencies run one way: commands -> worker and dashboard -> I/O -> the pure core, and no
  two modules import each other, directly or through others (the import graph is read from
  the source with ``ast``, imports inside functions included).
* Every ``FLEAD_`` setting is read in ``flead_app/settings.py`` only, and nothing reconfigures
  itself by writing ``os.environ``: settings are passed in.
* The pure core's public functions and classes carry runnable examples, and they run.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import flead_app

ROOT = Path(flead_app.__file__).parent

#: layer of each module (by prefix); a module may import its own layer and the ones below it
LAYERS = [
    ("settings", ["flead_app.settings"]),
    ("core", ["flead_app.algorithms", "flead_app.models", "flead_app.fleet", "flead_app.replay", "flead_app.web_auth"]),
    ("io", ["flead_app.io"]),
    ("dashboard", ["flead_app.dashboard.page", "flead_app.dashboard.queries", "flead_app.dashboard.grafana"]),
    ("worker", ["flead_app.app", "flead_app.faust_patches", "flead_app.runtime", "flead_app.agents",
                "flead_app.tables", "flead_app.web"]),
]  # fmt: skip
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
#: the pure core needs no service and no framework
CORE_FORBIDDEN = ("faust", "aiokafka", "sqlalchemy", "psycopg2", "pyspark", "mode", "aiohttp")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("flead_app", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The flead_app modules ``name`` imports (absolute and relative, anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> str:
    best = ("commands", -1)
    for lname, prefixes in LAYERS:
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = (lname, len(prefix))
    return best[0]


def rank(name: str) -> int:
    return RANK.get(layer(name), len(LAYERS))


def test_no_import_circles():
    g = graph()
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
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
                circles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_dependencies_run_one_way():
    wrong = [
        f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, deps in graph().items() for b in deps if rank(b) > rank(a)
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_the_core_imports_no_framework_or_service_client():
    offenders = []
    for name, path in modules().items():
        if layer(name) not in ("core", "settings"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            roots = (
                [a.name.split(".")[0] for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module.split(".")[0]]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            offenders += [f"{name} imports {r}" for r in roots if r in CORE_FORBIDDEN]
    assert not offenders, offenders


def _environ_uses(tree: ast.AST) -> list[ast.AST]:
    """``os.environ...`` and ``os.getenv`` nodes."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                out.append(node)
    return out


def test_flead_settings_are_read_in_settings_py_only_and_never_written():
    offenders = []
    for name, path in modules().items():
        source = path.read_text()
        tree = ast.parse(source)
        uses = _environ_uses(tree)
        if name != "flead_app.settings" and uses:
            lines = {source.splitlines()[n.lineno - 1].strip() for n in uses}
            offenders += [f"{name}: {line}" for line in lines if "FLEAD_" in line or ".update(" in line]
        for node in ast.walk(tree):  # os.environ[...] = ..., os.environ.update/setdefault/pop with FLEAD_
            if isinstance(node, ast.Assign | ast.AugAssign):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Subscript) and t.value in uses:
                        offenders.append(f"{name}:{node.lineno} writes os.environ")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.value in uses:
                if node.func.attr in ("update", "pop", "clear") or (
                    node.func.attr == "setdefault" and any("FLEAD_" in ast.unparse(a) for a in node.args)
                ):
                    offenders.append(f"{name}:{node.lineno} writes os.environ")
    assert not offenders, "\n".join(offenders)


def test_settings_outside_settings_py_are_not_looked_up_by_name():
    """No module builds ``FLEAD_...`` names to look up itself (help texts and messages may name them)."""
    offenders = []
    for name, path in modules().items():
        if name == "flead_app.settings":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_lookup = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if is_lookup and node.func.attr in ("get", "getenv"):
                if any(isinstance(a, ast.Constant) and str(a.value).startswith("FLEAD_") for a in node.args):
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def _has_methods(cls: type) -> bool:
    """Behaviour beyond a record's own (de)serialisation."""
    return any(callable(v) and not k.startswith(("_", "to_", "from_")) for k, v in vars(cls).items()) or any(
        isinstance(v, property) for v in vars(cls).values()
    )


CORE_WITH_EXAMPLES = [
    "flead_app.algorithms.aggregation",
    "flead_app.algorithms.decision",
    "flead_app.algorithms.device",
    "flead_app.algorithms.incident_features",
    "flead_app.algorithms.second_order",
    "flead_app.algorithms.fedbuff",
    "flead_app.algorithms.metrics",
    "flead_app.algorithms.detection",
    "flead_app.algorithms.running_stats",
    "flead_app.algorithms.sgd",
    "flead_app.algorithms.holdout",
    "flead_app.algorithms.sites",
    "flead_app.runtime",
    "flead_app.settings",
    "flead_app.tables.rows",
    "flead_app.io.kafka",
    "flead_app.io.traffic",
    "flead_app.models",
]


@pytest.mark.parametrize("module", CORE_WITH_EXAMPLES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module} has no runnable example"
    assert result.failed == 0


def test_public_core_functions_have_examples():
    """Every public function of the pure algorithms, and every class with behaviour (not a plain
    record), shows itself in a ``>>>`` example: in its own docstring or its module's (River's habit)."""
    missing = []
    for info in pkgutil.iter_modules([str(ROOT / "algorithms")]):
        mod = importlib.import_module(f"flead_app.algorithms.{info.name}")
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__ or not callable(obj):
                continue
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and not _has_methods(obj):
                continue
            examples = (obj.__doc__ or "") + (mod.__doc__ or "")
            if not any(line.lstrip().startswith((">>>", "...")) and attr in line for line in examples.splitlines()):
                missing.append(f"{mod.__name__}.{attr}")
    assert not missing, f"{len(missing)} without examples: {missing}"
