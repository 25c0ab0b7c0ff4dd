"""The benchmark's bundle cache: a bundle made by another exporter (or from another checkpoint) is exported again."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from crossmodal.bench import fixtures


def test_a_bundle_cached_by_an_older_exporter_is_exported_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    # A stand-in for the exporter module (the real one needs torch, absent from the runtime lane).
    stub = types.ModuleType("crossmodal.export.clip")
    stub.export_clip = lambda *a, **k: calls.append(a)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crossmodal.export.clip", stub)
    hf, bundle = tmp_path / "hf", tmp_path / "bundle"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    stamp = bundle / ".bench-source"

    current = fixtures._dir_key(hf) + ":auto:" + fixtures.exporter_key()
    stamp.write_text(current)
    fixtures.export_bundle(hf, bundle, None)
    assert calls == []  # same checkpoint, same exporter: the cache answers

    stamp.write_text(fixtures._dir_key(hf) + ":auto")  # what the exporter before this key wrote
    fixtures.export_bundle(hf, bundle, None)
    assert len(calls) == 1 and stamp.read_text() == current

    (hf / "config.json").write_text('{"changed": true}')  # another checkpoint in the same folder
    fixtures.export_bundle(hf, bundle, None)
    assert len(calls) == 2


def test_the_exporter_key_follows_the_exporter_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crossmodal.export as export_pkg

    real = fixtures.exporter_key()
    assert len(real) == 16 and fixtures.exporter_key() == real
    pkg = tmp_path / "export"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "clip.py").write_text("A = 1\n")
    monkeypatch.setattr(export_pkg, "__file__", str(pkg / "__init__.py"))
    before = fixtures.exporter_key()
    assert before != real
    (pkg / "cli" / "clip.py").write_text("A = 2\n")  # one byte of a sub-module's source
    assert fixtures.exporter_key() != before
