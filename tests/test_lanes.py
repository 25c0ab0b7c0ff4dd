"""The test lanes stay honest: conftest's module lists match the files, and `-m` selection is exact.

A module that imports the export side at module level but is missing from
EXPORT_MODULES breaks the torch-free lane's collection; a renamed module left
in a list silently drops out of its lane. Both are caught here, in every lane.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import conftest

TESTS = Path(conftest.__file__).resolve().parent
# Top-level packages of the export side (the `export` extra and the torch-based references).
EXPORT_SIDE = {"torch", "transformers", "sentence_transformers", "onnx", "onnxscript", "open_clip", "multilingual_clip"}


def _module_level_imports(path: Path) -> set[str]:
    """Dotted names imported at module level (not inside functions), importorskip'd ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.update(_importorskipped(node))
    return names


def _importorskipped(node: ast.AST) -> set[str]:
    return {str(call.args[0].value) for call in ast.walk(node)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "importorskip"
            and call.args and isinstance(call.args[0], ast.Constant)}


def _needs_export_side(path: Path, seen: frozenset[Path] = frozenset()) -> bool:
    for name in _module_level_imports(path):
        top = name.split(".")[0]
        if top in EXPORT_SIDE or name.startswith("crossmodal.export"):
            return True
        helper = TESTS / (name.replace(".", "/") + ".py")
        if top == "helpers" and helper.is_file() and helper not in seen and _needs_export_side(helper, seen | {path}):
            return True
    return False


def test_listed_modules_and_tests_exist() -> None:
    for name in conftest.EXPORT_MODULES | conftest.SLOW_MODULES:
        assert (TESTS / name).is_file(), f"tests/conftest.py lists {name}, which does not exist"
    for entry in conftest.EXPORT_TESTS | conftest.SLOW_TESTS:
        module, function = entry.split("::")
        source = (TESTS / module).read_text(encoding="utf-8") if (TESTS / module).is_file() else ""
        assert f"def {function}(" in source, f"tests/conftest.py lists {entry}, which does not exist"


def test_modules_that_import_the_export_side_are_export_modules() -> None:
    needing = {p.name for p in TESTS.glob("test_*.py") if _needs_export_side(p)}
    missing = needing - conftest.EXPORT_MODULES
    assert not missing, f"add {sorted(missing)} to EXPORT_MODULES in tests/conftest.py (they import torch-side modules)"


def test_helpers_the_runtime_lane_uses_are_torch_free() -> None:
    for name in ("golden", "bundles", "fake_encoder", "datasets", "images", "threads", "albef"):
        assert not _needs_export_side(TESTS / "helpers" / f"{name}.py"), name


class _Config:
    """The two things the lane rule reads from pytest's config."""

    def __init__(self, markexpr: str) -> None:
        self.markexpr = markexpr

    def getoption(self, name: str, default: str = "") -> str:
        assert name == "markexpr"
        return self.markexpr

    def getini(self, name: str) -> list[str]:
        assert name == "markers"
        return ["gpu: a", "slow: b", "export: c"]


@pytest.mark.parametrize("markexpr, skipped", [
    ("", False),
    ("not export", True),
    ("not slow and not export", True),
    ("not (export or slow)", True),
    ("export", False),
    ("slow", False),           # an export module may hold slow tests: it must be imported
    ("not slow", False),
    ("gpu or not export", False),
    ("not export and gpu", True),
])
def test_export_modules_are_left_unimported_only_when_all_their_tests_are_deselected(markexpr: str, skipped: bool) -> None:
    assert conftest._deselects_all_export_tests(_Config(markexpr)) is skipped  # type: ignore[arg-type]


def test_this_session_marks_export_tests(request: pytest.FixtureRequest) -> None:
    # Every collected item of an export module carries the marker (what -m selects on).
    items = [i for i in request.session.items if i.path.name in conftest.EXPORT_MODULES]
    assert all(i.get_closest_marker("export") for i in items)
    users = [i for i in request.session.items if "tiny_clip_dir" in getattr(i, "fixturenames", ())]
    assert all(i.get_closest_marker("export") for i in users)


def test_no_test_reads_beside_the_checkout() -> None:
    # A fresh clone has nothing beside it: the reference data lives in tests/golden/.
    offenders = []
    for path in sorted(set(TESTS.rglob("*.py")) - {Path(__file__).resolve()}):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if '/ "shared"' in line or "CROSSMODAL_GOLDEN" in line:
                offenders.append(f"{path.relative_to(TESTS)}:{n}")
    assert offenders == [], "read tests/golden/ through helpers.golden instead"
