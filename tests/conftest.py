"""Session fixtures (tiny random models of the real architectures, bundles exported from them) and the test lanes.

Nothing here touches the network; everything is built once per test session
in pytest's temporary directory, or copied from the ready-made bundles of the
torch-free lane (helpers/bundles.py).

Lanes (markers registered in pyproject.toml):
- ``export``: needs the export side (torch, transformers, onnx, the reference
  packages). Applied here, by module or by fixture, so the list is in one place.
  ``pytest -m "not export"`` is the torch-free lane (`make test-runtime`).
- ``slow``: more than a few seconds on 2 cores; ``-m "not slow and not export"``
  is the inner loop (`make test-fast`).
Every lane marker is applied here, not in the test modules, so the lists are the whole truth.
A test dependency that is missing fails its test in every lane, never skips it.
"""

from __future__ import annotations

import os
import sys
from itertools import combinations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from helpers.bundles import TINY_CLIP, copy_prebuilt, export_tiny_clip  # noqa: E402
from helpers.golden import GOLDEN_ROOT  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Modules that import the export side at module level (directly or through a helper), or
# whose every test compares against a torch reference: collecting them needs torch.
EXPORT_MODULES = frozenset({
    "test_albef_export.py",
    "test_albef_torch.py",
    "test_bench_quick.py",
    "test_bench_fixtures.py",
    "test_clip_export.py",
    "test_clip_tokenizer.py",
    "test_custom_export.py",
    "test_export_memory.py",
    "test_export_pipeline.py",
    "test_external_data.py",
    "test_fp16.py",
    "test_int8_calibration.py",
    "test_mbert_export.py",
    "test_mbert_fidelity.py",
    "test_mbert_tokenizer.py",
    "test_triton_repo.py",
})
# Fixtures that build or call a torch/transformers model; a test using one, directly or
# through another fixture, is an export test wherever it lives.
EXPORT_FIXTURES = frozenset({"tiny_clip_dir", "tiny_st_clip_dir", "clip_ref"})
# Single tests that need the export side inside a subprocess (module.py::function).
EXPORT_TESTS = frozenset({
    "test_cli.py::test_export_without_network_stops_at_once_with_instructions",
    "test_wheel.py::test_installed_wheel_finds_cards_and_calibration_images",  # imports crossmodal.export
    "test_demo.py::test_demo_runs_offline_and_finds_the_paraphrased_caption",  # exports MiniLM
    "test_lean_graph.py::test_planned_stages_follow_target_and_recipe",  # imports the pipeline (torch)
    "test_text_cleaning.py::test_clean_clip_equals_open_clip_cleaning",  # open_clip's tokenizer module imports torch
    "test_bench_text_graphs.py::test_tiny_albef_tower_end_to_end",
    "test_bench_text_graphs.py::test_tiny_mclip_tower_is_exported_from_a_multilingual_clip_checkpoint",
    "test_roofline.py::test_flop_counter_on_a_known_graph",  # writes graphs with onnx
    "test_roofline.py::test_tiny_clip_towers_count_the_vit_and_text_transformer_formulas",
    "test_roofline.py::test_measure_peaks_reports_positive_rates",
    "test_roofline.py::test_fused_bert_ops_count_their_projection_and_read_only_the_looked_up_rows",
})
# More than ~5 s on 2 busy cores (pytest --durations); `make test-fast` leaves them out.
SLOW_MODULES = frozenset({
    "test_bench_index_recall.py",  # recall measurements: 10-25 s each
    "test_serve_bench.py",         # a quick load benchmark against a live server: ~30 s
    "test_serve_browser.py",       # a server and a headless browser per module
    "test_serve_process.py",       # real server processes: signals, kill -9, restarts
    "test_custom_export.py",       # builds and exports a seed-style dual encoder once per module: 30-50 s
    "test_distributed.py",         # starts a local Ray cluster (13-27 s) and runs Ray Data jobs: 1-2 min
    "test_mbert_fidelity.py",      # ~45 s of CPU: export with fusion and int8 trials, 2 x 1,300 encodes
})
# Single tests over ~1.5 s (measured quiet: the other helpers' processes paused) or a matrix of
# process kills; `make test` runs them, the inner loop has cheaper tests of the same code.
SLOW_TESTS = frozenset({
    "test_index.py::test_concurrent_readers_while_writer_adds",
    "test_index.py::test_kill_minus_9_mid_write",                 # 8 writer processes killed: ~6 s
    "test_index.py::test_kill_minus_9_at_an_arbitrary_moment",     # ~1.5 s
    "test_index_keyword.py::test_kill_minus_9_leaves_fts_and_items_in_step",  # 5 writer processes killed: ~4 s
    "test_index_filters.py::test_hnsw_widening_rounds_then_an_exact_scan",    # HNSW builds: ~3 s
    "test_index_filters.py::test_hnsw_post_filter_widens_until_k_hits",       # ~1.6 s
    "test_index_read_only.py::test_serve_read_only_on_a_read_only_mount",     # unshare + mount: 2-2.6 s each
    "test_index_read_only.py::test_cli_search_on_a_read_only_mount",
    "test_index_read_only.py::test_an_index_whose_writer_was_killed_is_refused_on_a_read_only_mount",
    "test_ingest.py::test_end_to_end_build_kill_resume_search",
    "test_eval.py::test_eval_command_with_the_tiny_clip_bundle",   # a `crossmodal eval` process: 1.7 s (once 50 s under load)
    "test_retriever.py::test_search_command_fuses_filters_and_merges_as_the_library",  # `crossmodal search` processes: 5.5 s
    "test_sharded.py::test_cli_search_over_several_paths_equals_the_library",          # ~3 s
    "test_native_imports.py::test_import_order_does_not_crash",    # a fresh interpreter per import order: ~2 s
    "test_readme.py::test_cli_lines_run",
    "test_readme.py::test_python_block_runs",                      # a Python process per README block: ~6 s
    "test_runtime_no_torch.py::test_encoding_works_without_torch",
    "test_runtime_no_torch.py::test_the_core_runs_with_the_cpu_extra_only",  # a process that indexes the examples
    "test_demo.py::test_demo_runs_offline_and_finds_the_paraphrased_caption",  # exports, indexes, searches: ~1 min
    "test_bench_text_graphs.py::test_tiny_albef_tower_end_to_end",
    "test_bench_text_graphs.py::test_tiny_mclip_tower_is_exported_from_a_multilingual_clip_checkpoint",
})


_NOT_COLLECTED = pytest.StashKey[list]()


def _lane_markers(config: pytest.Config) -> list[str]:
    """The registered marker names ("slow: takes..." -> "slow")."""
    return [line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")]


def _deselects_all_export_tests(config: pytest.Config) -> bool:
    """True when ``-m`` deselects every test marked ``export``, whatever its other markers."""
    markexpr = config.getoption("markexpr", "")
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression  # pytest's own -m parser, so both agree

    expr = Expression.compile(markexpr)
    others = [m for m in _lane_markers(config) if m != "export"]
    for n in range(len(others) + 1):
        for extra in combinations(others, n):
            present = {"export", *extra}
            if expr.evaluate(lambda name, /, **kwargs: name in present):
                return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # An export module cannot even be imported without torch: when the marker expression
    # would deselect all of its tests anyway, do not import it.
    if collection_path.name in EXPORT_MODULES and _deselects_all_export_tests(config):
        config.stash.setdefault(_NOT_COLLECTED, []).append(collection_path.name)
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        name = f"{module}::{getattr(item, 'originalname', item.name)}"
        if (module in EXPORT_MODULES or name in EXPORT_TESTS
                or EXPORT_FIXTURES.intersection(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.export)
        if module in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    skipped = sorted(config.stash.get(_NOT_COLLECTED, []))
    if skipped:
        return f"export modules not imported (deselected by -m): {', '.join(skipped)}"
    return None


def _missing_dependency(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    """The reason of a skip raised by pytest.importorskip, else None."""
    if excinfo is None or not excinfo.errisinstance(pytest.skip.Exception):
        return None
    tb = excinfo.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    # Recognised by the frame that raised it: the skip carries no trace of the ImportError.
    if tb.tb_frame.f_code is pytest.importorskip.__code__:
        return str(excinfo.value.msg)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    # Every lane installs what its tests import: a missing package is a broken environment,
    # and a skip would hide it (the torch-free lane would quietly test less).
    reason = _missing_dependency(call.excinfo)
    if reason is not None and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"missing test dependency (a failure, not a skip): {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and isinstance(collector, pytest.Module):
        # A module-level importorskip; the exception is not passed to this hook, its message
        # is: longrepr is (path, line, "Skipped: could not import ...").
        message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "could not import" in message:
            report.outcome = "failed"
            report.longrepr = f"missing test dependency (a failure, not a skip): {message}"
    return report


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """tests/golden: the reference data committed with the tests."""
    return GOLDEN_ROOT


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers-format tiny CLIP with the real OpenAI BPE vocabulary."""
    from helpers.clip_models import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "hf")


@pytest.fixture(scope="session")
def tiny_st_clip_dir(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny CLIP saved as a sentence-transformers clip-ViT-* directory."""
    from helpers.clip_models import write_tiny_st_clip

    return write_tiny_st_clip(tiny_clip_dir, tmp_path_factory.mktemp("tiny-st-clip") / "st")


@pytest.fixture(scope="session")
def tiny_clip_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny CLIP exported to cpu-fp32 and cpu-int8 (the default int8 recipe search); read-only.

    Asks for ``tiny_clip_dir`` only when it has to export, so that tests using the
    bundle alone stay in the torch-free lane, which loads it ready-made.
    """
    out = tmp_path_factory.mktemp("bundles") / TINY_CLIP
    if copy_prebuilt(TINY_CLIP, out):
        return out
    return export_tiny_clip(request.getfixturevalue("tiny_clip_dir"), out)
