"""The `crossmodal` command line: every command's help, shared options, search through the Retriever, errors."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.cli import build_parser, main
from crossmodal.cli.handover import HANDOVERS
from crossmodal.index import Index
from crossmodal.retriever import Retriever
from crossmodal.variants import VARIANTS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossmodal.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_export_clip_from_the_command_line(tiny_clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-bundle"
    proc = _cli("export", "clip", "--model", str(tiny_clip_dir), "--out", str(out), "--targets", "cpu-fp32", "--no-optimize")
    assert proc.returncode == 0, proc.stderr
    assert (out / "bundle.json").is_file()
    assert sorted(p.name for p in (out / "text" / "cpu-fp32").iterdir()) == [
        "manifest.json", "model.onnx", "reference.npz", "tokenizer.json"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``crossmodal ARGV`` in this process (the entry point itself: test_python_dash_m_crossmodal): rc, stdout, stderr."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_embed_prints_json_matching_the_api(tiny_clip_bundle: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "embed", str(tiny_clip_bundle), "--text", "two dogs in the snow", "a cat")
    assert rc == 0, err
    got = json.loads(out)
    assert got["dim"] == 16 and [e["input"] for e in got["embeddings"]] == ["two dogs in the snow", "a cat"]
    expected = crossmodal.load(tiny_clip_bundle, modality="text").encode_text(["two dogs in the snow", "a cat"])
    np.testing.assert_allclose(np.array([e["vector"] for e in got["embeddings"]]), expected, atol=1e-6)

    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    rc, out, err = _run(capsys, "embed", str(tiny_clip_bundle), "--image", str(img), "--variant", "cpu-int8")
    assert rc == 0, err
    assert len(json.loads(out)["embeddings"][0]["vector"]) == 16


def test_errors_are_one_line_messages_with_exit_code_2(tiny_clip_bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "embed", str(tmp_path / "nope"), "--text", "x")
    assert rc == 2 and err.startswith("crossmodal embed: error: ") and "does not exist" in err and err.count("\n") == 1
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    rc, _, err = _run(capsys, "embed", str(tiny_clip_bundle), "--image", str(bad))
    assert rc == 2 and "bad.jpg" in err and "Traceback" not in err


def test_verify_command(tiny_clip_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "verify", str(tiny_clip_bundle))
    assert rc == 0, out + err
    assert "4 ok, 0 failed" in out


def test_export_without_network_stops_at_once_with_instructions(tmp_path: Path) -> None:
    proc = _cli("export", "clip", "--model", "openai/clip-vit-base-patch32", "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2
    assert "--model /path/to/DIR" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the parser: help, choices, aliases


def _parsers(parser: argparse.ArgumentParser, prog: str = "crossmodal"):
    """(prog, parser) for ``parser`` and every sub-parser below it."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


# Every command and sub-command of the parser, and the handed-over commands (their sub-commands: test_export_pipeline).
COMMANDS = sorted({prog.split(" ", 1)[1] for prog, _ in _parsers(build_parser()) if " " in prog} | set(HANDOVERS))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: crossmodal") and f"crossmodal {command.split()[0]}" in out


def test_every_option_has_help_text() -> None:
    parsers = dict(_parsers(build_parser()))
    assert {"crossmodal embed", "crossmodal index build", "crossmodal search", "crossmodal eval"} <= set(parsers)
    missing = [f"{prog} {a.option_strings or a.dest}" for prog, p in parsers.items() for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)
               # the handed-over commands bring their own parsers (asserted by the --help test above)
               and prog.split()[-1] not in HANDOVERS]
    assert missing == []


def test_every_k_option_is_spelled_k_and_top_k() -> None:
    # -k/--top-k on every command that takes a number of results, the handed-over ones included.
    import crossmodal.export.cli as export_cli
    from crossmodal.bench.cli import build_parser as bench_parser
    from crossmodal.serve.cli import build_parser as serve_parser

    roots = {"crossmodal": build_parser(), "crossmodal export": export_cli.build_parser(),
             "crossmodal bench": bench_parser(), "crossmodal serve": serve_parser()}
    k_like = {"-k", "--k", "--top-k", "--topk", "--top_k", "--top"}
    found = {}
    for root, parser in roots.items():
        for prog, p in _parsers(parser, root):
            for a in p._actions:
                if k_like & set(a.option_strings) or a.dest in ("k", "top_k"):
                    found.setdefault(prog, set()).update(a.option_strings)
                    assert a.dest == "top_k", (prog, a.option_strings)
    assert found and all({"-k", "--top-k"} <= spellings for spellings in found.values()), found


def test_variant_choices_are_the_variant_table(capsys: pytest.CaptureFixture[str]) -> None:
    choices = [a.choices for _, p in _parsers(build_parser()) for a in p._actions if "--variant" in a.option_strings]
    assert len(choices) == 6  # embed, verify, index build, index add, search, eval
    assert all(tuple(c) == VARIANTS for c in choices)
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "bundle", "--text", "x", "--variant", "cpu-fp64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "crossmodal embed: error: argument --variant: invalid choice: 'cpu-fp64'" in err and "cpu-int8" in err


def test_counts_are_checked_before_anything_loads(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["eval", "b", "--dataset", "coco", "--root", ".", "--batch-size", "0"],
                 ["embed", "b", "--text", "x", "--threads", "-1"],
                 ["index", "build", "b", "--images", ".", "--out", "o", "--workers", "two"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "expected a positive integer" in capsys.readouterr().err


def test_python_dash_m_crossmodal() -> None:
    proc = subprocess.run([sys.executable, "-m", "crossmodal", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"crossmodal {crossmodal.__version__}"
    proc = subprocess.run([sys.executable, "-m", "crossmodal", "serch", "x"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "crossmodal: error: argument COMMAND: invalid choice: 'serch'" in proc.stderr


def test_handover_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A serve module whose dependency is missing, as in an install without the serve extra.
    (tmp_path / "fake_serve_cli.py").write_text("import starlette_not_installed_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(HANDOVERS, "serve", dataclasses.replace(HANDOVERS["serve"], module="fake_serve_cli"))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert str(exit_info.value) == ("crossmodal serve: this command needs crossmodal[serve] (starlette_not_installed_here "
                                    "is missing): pip install 'crossmodal[serve]'")


def test_handover_names_the_extra_when_a_command_imports_it_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # `crossmodal export clip ...` without torch: --help works, running imports torch and must say what to install.
    (tmp_path / "fake_export_cli.py").write_text("def main(argv):\n    import torch_not_installed_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(HANDOVERS, "export", dataclasses.replace(HANDOVERS["export"], module="fake_export_cli"))
    assert main(["export", "clip", "--model", "x"]) == 2
    assert capsys.readouterr().err.strip() == ("crossmodal export: this command needs crossmodal[export] "
                                               "(torch_not_installed_here is missing): pip install 'crossmodal[export]'")


# ---------------------------------------------------------------- search: -k/--top-k, the Retriever


@pytest.fixture(scope="module")
def example_index(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example images and their captions indexed with the tiny CLIP bundle through `crossmodal index build`.

    Built once for the module: the tests only search it (read-only opens).
    """
    out = tmp_path_factory.mktemp("cli-index") / "examples.idx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["index", "build", str(tiny_clip_bundle), "--images", str(EXAMPLES), "--captions",
                     str(EXAMPLES / "captions.jsonl"), "--out", str(out), "--no-progress", "--json"]) == 0
    assert json.loads(printed.getvalue())["added"] == 12
    return out


def _search(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["search", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_top_k_spellings_agree(example_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = [_search(capsys, str(example_index), "a red circle", flag, "3") for flag in ("-k", "--top-k", "--k")]
    assert [len(a["results"]) for a in answers] == [3, 3, 3] and answers[0]["k"] == 3
    assert answers[0] == answers[1] == answers[2]
    assert len(_search(capsys, str(example_index), "a red circle")["results"]) == 5  # the default
    assert main(["search", str(example_index), "a red circle", "--top-k", "0"]) == 2
    assert "crossmodal search: error: -k/--top-k must be a positive integer, got 0." in capsys.readouterr().err


def test_search_answers_what_the_retriever_answers(tiny_clip_bundle: Path, example_index: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    enc = crossmodal.load(tiny_clip_bundle)
    with Index.open(example_index, read_only=True) as idx:
        retriever = Retriever(enc, idx)
        cases = [
            (["a red circle", "-k", "4"], retriever.search_text("a red circle", k=4)),
            (["a stop sign", "-k", "3", "--target", "text"], retriever.search_text("a stop sign", k=3, tower="text")),
            (["--image", str(EXAMPLES / "sunset_gradient.jpg"), "-k", "2"],
             retriever.search_image(str(EXAMPLES / "sunset_gradient.jpg"), k=2)),
        ]
    for argv, want in cases:
        got = _search(capsys, str(example_index), *argv)["results"]
        assert [r["key"] for r in got] == [h.key for h in want]
        assert [r["caption"] for r in got] == [h.caption for h in want]
        np.testing.assert_allclose([r["score"] for r in got], [h.score for h in want], atol=1e-6)
    first = _search(capsys, str(example_index), "--image", str(EXAMPLES / "sunset_gradient.jpg"), "-k", "1")
    assert Path(first["results"][0]["path"]).name == "sunset_gradient.jpg"  # an image finds itself
    assert first["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_index_of_captions_only_is_searched_as_text(tiny_clip_bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    enc = crossmodal.load(tiny_clip_bundle, modality="text")
    captions = ["a red circle", "a blue square", "the word hello"]
    with Index.create(tmp_path / "caps.idx", bundle=enc.bundle, info={"bundle_path": str(tiny_clip_bundle)}) as idx:
        idx.add(enc.encode_text(captions), [{"caption": c} for c in captions], tower="text")
        idx.save()
    answer = _search(capsys, str(tmp_path / "caps.idx"), "the word hello", "-k", "3")
    assert answer["target"] == "text" and answer["results"][0]["caption"] == "the word hello"
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert _search(capsys, str(tmp_path / "caps.idx"), "x", "--target", "image")["results"] == []
