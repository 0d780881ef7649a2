"""Packages point one way: the ground floor imports nothing of ours; model_registry and monitoring import only
the floor; pipelines builds on all of them; dags wire pipelines. Read from the source (every import statement,
lazy ones inside functions included), so a new back-edge fails here before it reaches a serving host."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"factory_core", "pipelines", "model_registry", "monitoring", "dags"}
ALLOWED = {
    "factory_core": {"factory_core"},
    "model_registry": {"factory_core", "model_registry"},
    "monitoring": {"factory_core", "monitoring"},
    "pipelines": {"factory_core", "model_registry", "monitoring", "pipelines"},
    "dags": {"factory_core", "pipelines", "monitoring", "model_registry", "dags"},
}


def imports_of(path: Path, package: str) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add((package if node.level else (node.module or "").split(".")[0], node.lineno))
    return {(name, line) for name, line in out if name in OURS}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    wrong = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in files for name, line in imports_of(f, package)
             if name not in ALLOWED[package]]
    assert not wrong, "imports against the direction of the layers:\n" + "\n".join(sorted(wrong))


def test_the_checker_sees_a_lazy_back_edge(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from pipelines.stages import plan\n    import monitoring.nvml\n")
    assert imports_of(bad, "model_registry") == {("pipelines", 2), ("monitoring", 3)}
