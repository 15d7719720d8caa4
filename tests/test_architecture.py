"""The package layout holds: no import circle (function-local imports included), one namespace, and a
preset layer that never loads torch.

Installed, the repository's packages live only under `ssmscope` (ssmscope.ssm, ssmscope.runs, …),
so a user's own `app.py` or `runs.py` never shadows them and no module named app, runs, ssm or
probes reaches their environment.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ssmscope": "ssmscope", "ssmscope.ssm": "ssm", "ssmscope.probes": "probes", "ssmscope.runs": "runs",
            "ssmscope.app": "app"}


def _modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name → file."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            if package == "ssmscope" and path.parent != ROOT / "ssmscope":
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module → the modules it imports anywhere in its source (module level or inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle_closed_by_a_function_local_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_circle_between_modules():
    graph = import_graph()
    assert len(graph) > 60 and graph["ssmscope.runs.cli.main"]  # the walk saw the code
    assert cycles(graph) == []


def test_layers_point_one_way():
    """ssm knows nothing of probes or runs; probes nothing of runs; app never imports the CLI; analysis
    reads only the store's schema (column names), never the database; analysis and app take of ssm only the
    torch-free preset layer and the predictions."""
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("ssmscope.ssm"):
            layers_above = ("ssmscope.probes", "ssmscope.runs", "ssmscope.app")
            assert not {t for t in targets if t.startswith(layers_above)}, module
        if module.startswith("ssmscope.probes"):
            assert not {t for t in targets if t.startswith(("ssmscope.runs", "ssmscope.app"))}, module
        if module.startswith("ssmscope.app"):
            assert not {t for t in targets if t.startswith(("ssmscope.runs.cli", "ssmscope.runs.sweeps"))}, module
        if module.startswith("ssmscope.runs"):  # the notebook API (ssmscope/*.py) sits above runs and app
            assert not {t for t in targets if t.startswith("ssmscope.app")}, module
        if module.startswith("ssmscope.runs.analysis"):
            store = {t for t in targets if t.startswith("ssmscope.runs.store")} - {"ssmscope.runs.store.schema"}
            above = {t for t in targets if t.startswith(("ssmscope.runs.sweeps", "ssmscope.runs.cli", "ssmscope.app"))}
            assert not store and not above, module
        if module.startswith(("ssmscope.runs.analysis", "ssmscope.app")):  # of ssm, only the torch-free modules
            ssm = {t for t in targets if t.startswith("ssmscope.ssm")}
            assert ssm <= {*PRESET_LAYER, "ssmscope.ssm.predictions"}, (module, sorted(ssm))


def test_no_module_under_runs_imports_app():
    """runs/ is below app/ (the dashboard reads the store and the analyses, never the other way round), and the
    notebook API that draws the dashboard's figure lives above both, in ssmscope/. Scans every import statement,
    function-local and relative ones included (resolved against the module's package)."""
    seen = 0
    for name, path in _modules().items():
        if not name.startswith("ssmscope.runs"):
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            seen += 1
            assert not [t for t in targets if t in ("ssmscope.app", "app") or t.startswith(("ssmscope.app.", "app."))
                        ], f"{name} imports {targets}"
    assert seen > 200  # the scan saw runs/' imports


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_a_folder_with_its_own_app_and_runs_modules_shadows_nothing(tmp_path):
    (tmp_path / "app.py").write_text("WHO = 'the user app'\n")
    (tmp_path / "runs.py").write_text("WHO = 'the user runs'\n")
    code = ("import importlib.util as u, app, runs\n"
            "from ssmscope.app import data, figures, frames, tables\n"
            "from ssmscope.runs.analysis import slopes\n"
            "import ssmscope.runs.cli.main\n"
            "assert app.WHO == 'the user app' and runs.WHO == 'the user runs'\n"
            "assert u.find_spec('ssm') is None and u.find_spec('probes') is None\n"
            "print('ok', figures.__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ssmscope.app.figures"
    cli = Path(sys.executable).with_name("ssmscope")
    shown = subprocess.run([str(cli), "--help"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "sweep" in shown.stdout and "slopes" in shown.stdout


def test_no_top_level_app_runs_ssm_or_probes_is_installed(tmp_path):
    code = ("import importlib.util as u\n"
            "print([m for m in ('app', 'runs', 'ssm', 'probes') if u.find_spec(m) is not None])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


PRESET_LAYER = ("ssmscope.ssm.presets", "ssmscope.ssm.bases", "ssmscope.ssm.exponents", "ssmscope.ssm.roles",
                "ssmscope.ssm.config", "ssmscope.ssm.tomlfiles", "ssmscope.ssm.errors")
"""The one torch-free preset layer: tables, validation, enums and exponent arithmetic (ssm.apply applies them)."""
TORCH_FREE = (*PRESET_LAYER, "ssmscope.ssm.predictions", "ssmscope.runs.analysis.equivalence",
              "ssmscope.runs.analysis.preset_toml", "ssmscope.runs.analysis.solver", "ssmscope.app.data",
              "ssmscope.app.frames", "ssmscope.app.tables", "ssmscope.app.figures")
"""Modules that read presets (or show what was read from them) and must not load torch."""


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, set())
    return seen


def test_the_preset_layer_imports_only_itself():
    """Every import of the preset layer (function-local ones included) stays inside it: no model, no scan,
    no ssm.apply, nothing above ssm — so reading a preset can never pull torch in, not even lazily."""
    graph = import_graph()
    for module in PRESET_LAYER:
        outside = _reachable(graph, module) - set(PRESET_LAYER) - {"ssmscope.ssm"}
        assert not outside, (module, sorted(outside))


def test_reading_presets_loads_no_torch():
    """The preset layer, the equivalence check, the solver and the dashboard's data modules import without
    torch, and still read presets (a fresh interpreter, so nothing imported by other tests counts)."""
    code = ("import sys, importlib\n"
            f"for name in {list(TORCH_FREE)!r}:\n"
            "    importlib.import_module(name)\n"
            "from ssmscope.ssm.presets import load_preset\n"
            "from ssmscope.runs.analysis import equivalence, preset_toml\n"
            "from ssmscope.ssm.tomlfiles import read_builtin_or_file\n"
            "assert load_preset('mup-ssm').scaling('x_proj_B', 'euler').lr['adam'].n_x == -0.5\n"
            "assert equivalence.same_parameterization('mup', 'mup-ssm', 'zoh', 'adam', [(64, 64), (128, 128)])\n"
            "raw, _ = read_builtin_or_file('ssmscope.ssm', 'presets', 'preset', 'mup')\n"
            "assert preset_toml.exponents(raw, 'x_proj_B', 'zoh', 'init') == (-1, 0.5)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_docs_architecture_names_every_module():
    """docs/architecture.md names every module of the packages (as `name` or by its path): a new module gets a
    line there, saying what its one job is."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = [f.relative_to(ROOT) for pkg in ("ssm", "probes", "runs", "app", "ssmscope")
               for f in sorted((ROOT / pkg).rglob("*.py")) if f.name != "__init__.py"]
    assert len(modules) > 100
    missing = [str(m) for m in modules if f"`{m.stem}`" not in doc and str(m) not in doc]
    assert missing == [], f"docs/architecture.md does not name: {', '.join(missing)}"
