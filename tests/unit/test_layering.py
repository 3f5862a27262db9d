"""The house's layering, read from the source (AST), so that it cannot drift: the core (``memos_pipeline``) imports
none of the processes that use it (``api``, ``workers``, ``cli``, ``evaluation``) nor Flask or matplotlib, and
Celery only in the app factory and the producer; ``api`` and ``workers`` never import the evaluation code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELERY_ALLOWED = {"memos_pipeline/celery_app.py", "memos_pipeline/producer.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, top-level or inside a function, absolute names only (we use no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize("path", sources("memos_pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_outer_layer(path: Path) -> None:
    forbidden = {"api", "workers", "cli", "evaluation", "fakes", "tests", "flask", "matplotlib"}
    rel = str(path.relative_to(ROOT))
    if rel not in CELERY_ALLOWED:
        forbidden |= {"celery"}
    assert not roots(path) & forbidden, f"{rel} imports {sorted(roots(path) & forbidden)}"


@pytest.mark.parametrize("package", ["api", "workers"])
def test_services_import_no_evaluation_or_cli(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(roots(p) & {"evaluation", "cli", "fakes", "tests"})
        for p in sources(package)
        if roots(p) & {"evaluation", "cli", "fakes", "tests"}
    }
    assert not offenders, offenders


def test_no_module_names_another_layer_by_string() -> None:
    """A dotted path in a string ('workers.consumer:X') is an import the graph above cannot see."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in sources("memos_pipeline")
        if any(f'"{layer}.' in p.read_text() for layer in ("api", "workers", "cli", "evaluation"))
    ]
    assert not offenders, offenders


def test_the_scan_sees_the_tree() -> None:
    # Guards the tests above against passing vacuously after a move.
    assert len(sources("memos_pipeline")) > 30
    assert "memos_pipeline.config" in imported_modules(ROOT / "memos_pipeline" / "celery_app.py")
