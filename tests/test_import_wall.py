"""The walls of the code, read from the source (AST), so a new import cannot slip through:

* only ``mad/remote.py`` (Ray core) and ``mad/distributed.py`` (Ray Train) import Ray;
* no private Ray or torch API: no ``ray._private``/``ray._raylet``..., no ``torch._foreach_*`` or
  any other ``torch._name`` (imports, attribute access, and keyword arguments such as
  ``ray.init(_temp_dir=...)`` on a Ray call);
* ``loops/`` imports neither torch nor Ray; ``mad/metrics`` imports no Ray and no loop.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

RAY_MODULES = {"mad/remote.py", "mad/distributed.py"}
SOURCES = sorted(p for d in ("mad", "loops") for p in (ROOT / d).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import, at any depth (lazy imports inside functions count)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _private(name: str) -> bool:
    """ray._x / torch._x (a leading underscore right after the package; dunders excepted)."""
    parts = name.split(".")
    return (len(parts) > 1 and parts[0] in ("ray", "torch") and parts[1].startswith("_")
            and not parts[1].startswith("__"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def wall_problems(tree: ast.AST, rel: str) -> list[str]:
    """Every break of the walls in the module ``rel`` (a path relative to the repository root)."""
    problems = []
    for line, mod in _imports(tree):
        top = mod.split(".")[0]
        if top == "ray" and rel not in RAY_MODULES:
            problems.append(f"{rel}:{line} imports {mod} (only {', '.join(sorted(RAY_MODULES))} may import Ray)")
        if _private(mod):
            problems.append(f"{rel}:{line} imports the private {mod}")
        if rel.startswith("loops/") and top in ("torch", "ray"):
            problems.append(f"{rel}:{line} imports {mod} (loops/ stays free of torch and Ray)")
        if rel.startswith("mad/metrics/") and (top == "ray" or top == "loops"):
            problems.append(f"{rel}:{line} imports {mod} (mad/metrics imports no Ray and no loop)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name and _private(name):
                problems.append(f"{rel}:{node.lineno} uses the private {name}")
        if isinstance(node, ast.Call):
            fn = _dotted(node.func) or ""
            if fn.startswith("ray."):
                for kw in node.keywords:
                    if kw.arg and kw.arg.startswith("_"):
                        problems.append(f"{rel}:{node.lineno} passes the private argument {kw.arg}= to {fn}")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_walls(path):
    rel = _rel(path)
    problems = wall_problems(ast.parse(path.read_text(), filename=rel), rel)
    assert not problems, "\n".join(problems)


def test_the_scan_sees_what_it_must_refuse():
    """The same checks, applied to code that breaks every wall, find every break."""
    bad = ast.parse("import ray\nfrom ray._private.worker import global_worker\nimport torch\n"
                    "torch._foreach_lerp_(a, b, 0.1)\nray.init(_temp_dir='/x')\nimport loops\n")
    found = "\n".join(wall_problems(bad, "loops/x.py"))
    for words in ("imports ray (only", "imports the private ray._private", "uses the private torch._foreach_lerp_",
                  "private argument _temp_dir= to ray.init", "loops/ stays free of torch and Ray"):
        assert words in found, words
    assert "mad/metrics imports no Ray and no loop" in "\n".join(wall_problems(bad, "mad/metrics/x.py"))
    assert wall_problems(ast.parse("import torch\nimport numpy\ntorch.nn.Linear(1, 1)\n"), "mad/x.py") == []
    assert not _private("torch.__version__") and not _private("torch.nn")
