"""Folder ingestion: walking, skip report, dedup by content, captions, pipelining, progress, kill + resume."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import IncompatibleTowersError, InputError
from crossmodal.decode_pool import THREAD_NAME_PREFIX
from crossmodal.index import Index
from crossmodal.ingest import ingest_folder, read_captions, walk_images
from crossmodal.retriever import Retriever
from helpers.datasets import colour_image, make_image_folder
from helpers.fake_encoder import FakeEncoder

DIM = 32


@pytest.fixture()
def folder(tmp_path: Path):
    return make_image_folder(tmp_path / "photos")


def new_index(tmp_path: Path, enc: FakeEncoder, root: Path) -> Index:
    return Index.create(tmp_path / "idx", bundle=enc.bundle, root=root)


def test_walk_reports_everything_it_passes_over(folder) -> None:
    files, skipped = walk_images(folder.root)
    assert sorted(files) == sorted(folder.good + folder.corrupt + folder.duplicates)
    reasons = {Path(s.path): s.reason for s in skipped}
    assert set(reasons) == set(folder.not_images) | {folder.root / "copies" / "loop"}
    assert "already visited" in reasons[folder.root / "copies" / "loop"]
    assert reasons[folder.root / "notes.txt"] == "not an image file (extension '.txt')"
    os.symlink(folder.root / "missing.png", folder.root / "dangling.png")
    _, skipped = walk_images(folder.root)
    assert {Path(s.path): s.reason for s in skipped}[folder.root / "dangling.png"] == "broken symbolic link"
    with pytest.raises(InputError, match="not a directory"):
        walk_images(folder.root / "notes.txt")


def test_ingest_indexes_good_files_and_reports_the_rest(tmp_path: Path, folder) -> None:
    enc = FakeEncoder(DIM)
    idx = new_index(tmp_path, enc, folder.root)
    report = ingest_folder(idx, enc, folder.root, batch_size=5, progress=False)
    assert report.found == 16 + 3 + 1
    assert report.added == 16 and len(idx) == 16 and report.duplicates == 1
    skipped = {Path(s.path): s.reason for s in report.skipped}
    assert set(skipped) == set(folder.corrupt) | set(folder.not_images) | {folder.root / "copies" / "loop"}
    assert skipped[folder.root / "bad" / "empty.jpg"] == "empty file"
    assert all(skipped[p] for p in folder.corrupt)  # each with a reason
    summary = report.summary()
    for p in folder.corrupt + folder.not_images:
        assert str(p) in summary
    assert "16 embedded" in summary and "1 duplicate" in summary
    assert enc.image.embedded == 16  # type: ignore[union-attr]

    # text -> image and image -> image are meaningful with the fake encoder's colour vectors
    search = Retriever(enc, idx)
    top = search.search_text("red", 4)
    assert {folder.colour_of[Path(h.path)] for h in top} == {"red"}
    probe = np.asarray(colour_image("blue", "flat", seed=123))
    assert {folder.colour_of[Path(h.path)] for h in search.search_image(probe, 4)} == {"blue"}

    # a second run hashes but never decodes or embeds again
    enc2 = FakeEncoder(DIM)
    again = ingest_folder(idx, enc2, folder.root, progress=False)
    assert again.added == 0 and again.already_indexed == 17 and enc2.image.embedded == 0  # type: ignore[union-attr]
    # a new file is picked up; a file whose content changed is embedded under its new content
    colour_image("purple", "flat").save(folder.root / "flat" / "new.png")
    colour_image("white", "flat").save(folder.root / "flat" / "green_flat.png")
    third = ingest_folder(idx, FakeEncoder(DIM), folder.root, progress=False)
    assert third.added == 2 and third.replaced == 1 and len(idx) == 17  # the old green_flat content is gone
    assert [h.path for h in search.search_text("white", 1)] == [str(folder.root / "flat" / "green_flat.png")]
    assert str(folder.root / "flat" / "green_flat.png") not in [h.path for h in search.search_text("green", 3)]
    idx.close()
    reopened = Index.open(tmp_path / "idx", read_only=True)
    assert len(reopened) == 17 and reopened.journal_size() == 0  # compacted at the end


def test_relative_folder_is_stored_relative_to_the_index_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_folder(tmp_path / "photos", colours=("red",), kinds=("flat",), extras=False)
    monkeypatch.chdir(tmp_path)
    enc = FakeEncoder(DIM)
    idx = Index.create("idx", bundle=enc.bundle, root="photos")
    assert ingest_folder(idx, enc, "photos", progress=False).added == 1
    assert [r.path for r in idx.items()] == [str(tmp_path / "photos" / "flat" / "red_flat.png")]
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as conn:
        assert conn.execute("SELECT path FROM items").fetchall() == [("flat/red_flat.png",)]


def test_empty_folder_and_incompatible_index(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    enc = FakeEncoder(DIM)
    idx = new_index(tmp_path, enc, tmp_path / "empty")
    report = ingest_folder(idx, enc, tmp_path / "empty", progress=False)
    assert (report.found, report.added, report.skipped) == (0, 0, [])
    with pytest.raises(IncompatibleTowersError):
        ingest_folder(idx, FakeEncoder(DIM, space="elsewhere"), tmp_path / "empty", progress=False)
    with pytest.raises(InputError, match="image tower"):
        ingest_folder(idx, FakeEncoder(DIM, with_image=False), tmp_path / "empty", progress=False)


def test_captions_jsonl_and_csv(tmp_path: Path, folder) -> None:
    jl = tmp_path / "caps.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"image": "flat/green_flat.png", "caption": "a green thing"},
        {"image": "flat/green_flat.png", "caption": "emerald"},
        {"filename": "blue_square.jpg", "captions": ["a blue square", "navy"]},
        {"path": "flat/red_flat.png", "text": "scarlet"},  # a duplicate of copies/same_as_first.png
    ]) + "\n")
    caps = read_captions(jl)
    assert caps == {"flat/green_flat.png": ["a green thing", "emerald"], "blue_square.jpg": ["a blue square", "navy"],
                    "flat/red_flat.png": ["scarlet"]}
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text("image,caption\nflat/green_flat.png,a green thing\nflat/green_flat.png,emerald\n")
    assert read_captions(csv_path) == {"flat/green_flat.png": ["a green thing", "emerald"]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="record 1"):
        read_captions(bad)
    with pytest.raises(InputError, match=".jsonl or .csv"):
        read_captions(tmp_path / "caps.txt")

    enc = FakeEncoder(DIM)
    idx = new_index(tmp_path, enc, folder.root)
    report = ingest_folder(idx, enc, folder.root, captions=caps, progress=False)
    assert report.captions_added == 5 and idx.count("text") == 5 and idx.count("image") == 16
    search = Retriever(enc, idx)
    green = search.search_text("green", 4)
    assert [h.caption for h in green if h.path.endswith("green_flat.png")] == ["a green thing"]
    # image -> text: a green query image finds the green image's colour caption first
    hits = search.search_image(np.asarray(colour_image("green", "flat", seed=5)), 5, tower="text")
    assert hits[0].caption == "a green thing" and hits[0].path.endswith("flat/green_flat.png")
    assert {h.caption for h in hits} == {"a green thing", "emerald", "a blue square", "navy", "scarlet"}
    dup = [r for r in idx.items(tower="text") if r.caption == "scarlet"]
    assert [r.path for r in dup] == [str(folder.root / "flat" / "red_flat.png")]
    # rerunning with the same captions adds nothing
    again = ingest_folder(idx, FakeEncoder(DIM), folder.root, captions=caps, progress=False)
    assert (again.added, again.captions_added) == (0, 0)


class OverlapProbe(FakeEncoder):
    """Proves decoding runs while the model runs, by a handshake rather than by timing.

    The first model call announces itself and then waits until a decode that was held back
    until that announcement finishes: files outside the first batch (``first_batch``, their
    bytes) decode only once the model is running, so none of them can finish early and let a
    serial pipeline pass. A pipeline that decodes only between model calls never completes
    the handshake (the wait times out and the test fails); an overlapping one completes it
    however slow or busy the machine is.
    """

    def __init__(self, first_batch: set[bytes]) -> None:
        super().__init__(DIM)
        self.model_running = threading.Event()
        self.decoded_meanwhile = threading.Event()
        self.decoder_threads: list[str] = []
        self.handshake_done = False
        decode, run = self._image.preprocess_one, self._image.run_pixels

        def probed_decode(source):
            if source in first_batch:
                return decode(source)
            running = self.model_running.wait(timeout=60)
            out = decode(source)
            if running:
                self.decoder_threads.append(threading.current_thread().name)
                self.decoded_meanwhile.set()
            return out

        def probed_run(pixels):
            if not self.model_running.is_set():
                self.model_running.set()
                self.handshake_done = self.decoded_meanwhile.wait(timeout=60)
            return run(pixels)

        self._image.preprocess_one = probed_decode  # type: ignore[method-assign]
        self._image.run_pixels = probed_run  # type: ignore[method-assign]


def test_decoding_overlaps_the_model(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "p", colours=("red", "green", "blue", "yellow"), extras=False)
    files, _ = walk_images(folder.root)
    enc = OverlapProbe(first_batch={f.read_bytes() for f in files[:4]})
    idx = new_index(tmp_path, enc, folder.root)
    report = ingest_folder(idx, enc, folder.root, batch_size=4, workers=2, progress=False)
    assert report.added == 16 and enc._image.calls == 4  # fixed batch size: 4 batches of 4
    assert enc.handshake_done, "no file was decoded while the model ran on the first batch"
    assert len(enc.decoder_threads) == 12 and all(t.startswith(THREAD_NAME_PREFIX) for t in enc.decoder_threads)


def test_progress_goes_to_the_stream_and_progress_false_prints_nothing(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "p", colours=("red", "green"), extras=False)
    enc = FakeEncoder(DIM)
    idx = new_index(tmp_path, enc, folder.root)
    buf = io.StringIO()
    ingest_folder(idx, enc, folder.root, batch_size=3, progress=True, stream=buf)
    final = buf.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("indexing: 100%") and "8/8" in final and "embedded=8" in final and "img/s" in final
    silent = io.StringIO()
    again = ingest_folder(idx, FakeEncoder(DIM), folder.root, progress=False, stream=silent)
    assert again.already_indexed == 8 and silent.getvalue() == ""
    for bad in ({"batch_size": 0}, {"workers": True}, {"batch_size": 2.0}, {"compact_every": -1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            ingest_folder(idx, enc, folder.root, progress=False, **bad)


BUILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from crossmodal.index import Index
    from crossmodal.ingest import ingest_folder
    from helpers.fake_encoder import FakeEncoder
    enc = FakeEncoder(32, delay=0.05)
    run = enc._image.run_pixels
    def noisy(px):
        out = run(px)
        print("BATCH", flush=True)
        return out
    enc._image.run_pixels = noisy
    idx = Index.create(sys.argv[2], bundle=enc.bundle, root=sys.argv[1])
    ingest_folder(idx, enc, sys.argv[1], batch_size=3, progress=False)
    print("FINISHED", flush=True)
""")


def test_killed_build_resumes_without_reembedding(tmp_path: Path, folder) -> None:
    helpers_dir = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(folder.root), str(tmp_path / "idx"), helpers_dir],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert [proc.stdout.readline().strip() for _ in range(3)] == ["BATCH"] * 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    idx = Index.open(tmp_path / "idx")
    before = len(idx)
    assert 6 <= before < 16 and idx.journal_size() == before  # committed batches, never compacted
    enc = FakeEncoder(DIM)
    report = ingest_folder(idx, enc, folder.root, batch_size=3, progress=False)
    # the duplicate pair counts once as embedded and once as known or duplicate
    assert report.already_indexed + report.duplicates == before + 1 and report.added == 16 - before
    assert enc.image.embedded == 16 - before  # type: ignore[union-attr]
    assert len(idx) == 16 and len(list(idx.items())) == 16


# ---------------------------------------------------------------- CLI (encoder substituted)


@pytest.fixture()
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    import crossmodal.loader

    calls: list[tuple] = []

    def load(path, variant=None, modality=None, **kwargs):
        calls.append((str(path), variant, modality))
        return FakeEncoder(DIM)

    monkeypatch.setattr(crossmodal.loader, "load", load)
    return calls


def test_cli_build_search_add(tmp_path: Path, folder, fake_loader, capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path / "bundle"), "--images", str(folder.root), "--out", str(out),
                 "--batch-size", "4", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["added"] == 16 and len(report["skipped"]) == 6
    assert "20/20" in captured.err and "embedded=16" in captured.err  # the progress bar went to stderr
    assert fake_loader[-1] == (str(tmp_path / "bundle"), None, "image")

    assert main(["search", str(out), "a red thing", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    hits = answer["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and answer["search"] == "exact"  # 16 vectors: scanned
    assert {folder.colour_of[Path(h["path"])] for h in hits} == {"red"}
    assert main(["search", str(out), "a red thing", "-k", "3", "--json", "--hnsw"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["search"] == "hnsw" and [h["key"] for h in answer["results"]] == [h["key"] for h in hits]
    with pytest.raises(SystemExit):  # argparse: the two modes are mutually exclusive
        main(["search", str(out), "red", "--exact", "--hnsw"])
    capsys.readouterr()
    assert fake_loader[-1] == (str(tmp_path / "bundle"), "cpu-fp32", "text")  # bundle + variant recorded at build

    query = folder.root / "circle" / "blue_circle.png"
    assert main(["search", str(out), "--image", str(query), "-k", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first[0] == "1" and float(first[1]) == pytest.approx(1.0, abs=1e-4) and first[2] == str(query)

    for bad in (["search", str(out), "red", "-k", "0"], ["search", str(out)],
                ["search", str(out), "red", "--image", str(query)]):
        assert main(bad) == 2
    assert "positive integer" in capsys.readouterr().err

    # rerunning build resumes and embeds nothing; add picks up a new sub-folder
    assert main(["index", "build", "b", "--images", str(folder.root), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "0 embedded" in captured.out
    (folder.root / "new").mkdir()
    colour_image("orange", "circle").save(folder.root / "new" / "orange.png")
    assert main(["index", "add", str(out), "--images", str(folder.root / "new"), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    (tmp_path / "elsewhere").mkdir()
    assert main(["index", "add", str(out), "--images", str(tmp_path / "elsewhere")]) == 2
    assert "outside" in capsys.readouterr().err
    assert len(Index.open(out, read_only=True)) == 17


def test_cli_refuses_empty_folder_and_searches_captions(tmp_path: Path, folder, fake_loader,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert main(["index", "build", "b", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
    assert "no image files found" in capsys.readouterr().err and not (tmp_path / "e").exists()

    caps = tmp_path / "caps.csv"
    caps.write_text("filename,caption\nyellow_flat.png,a yellow field\ngreen_text.jpg,green letters\n")
    assert main(["index", "build", "b", "--images", str(folder.root), "--captions", str(caps),
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert fake_loader[-1][2] is None  # both towers loaded to embed the captions
    capsys.readouterr()
    probe = tmp_path / "probe.png"
    colour_image("yellow", "flat", seed=77).save(probe)
    assert main(["search", str(tmp_path / "c"), "--image", str(probe), "--target", "text", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 2 and hits[0]["caption"] == "a yellow field"
    assert hits[0]["path"] == str(folder.root / "flat" / "yellow_flat.png")


# ---------------------------------------------------------------- end to end with the real tiny CLIP bundle

SLOW_CLI = textwrap.dedent("""
    import sys, time
    import crossmodal.loader as loader
    real_load = loader.load
    def slow_load(*args, **kwargs):
        enc = real_load(*args, **kwargs)
        run = enc.image.run_pixels
        def slow(pixels):
            out = run(pixels)
            print("BATCH", flush=True)
            time.sleep(0.3)
            return out
        enc.image.run_pixels = slow
        return enc
    loader.load = slow_load
    from crossmodal.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossmodal.cli", *args], capture_output=True, text=True, timeout=300)


def test_end_to_end_build_kill_resume_search(tiny_clip_bundle: Path, tmp_path: Path, folder) -> None:
    import crossmodal

    out = tmp_path / "idx"
    build = ["index", "build", str(tiny_clip_bundle), "--images", str(folder.root), "--out", str(out),
             "--batch-size", "2", "--no-progress", "--json"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *build], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert [proc.stdout.readline().strip() for _ in range(3)] == ["BATCH"] * 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with Index.open(out, read_only=True) as partial:
        before = len(partial)
    assert 4 <= before < 16

    done = _cli(*build)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 16 - before  # nothing embedded twice
    assert report["already_indexed"] + report["duplicates"] == before + 1
    assert {Path(s["path"]) for s in report["skipped"]} == (set(folder.corrupt) | set(folder.not_images)
                                                           | {folder.root / "copies" / "loop"})

    # search results agree with a brute-force scan of the same encoder's vectors
    enc = crossmodal.load(tiny_clip_bundle)
    paths = sorted(str(p) for p in folder.good if p != folder.good[0]) + [str(folder.duplicates[0])]
    vecs = enc.encode_image(paths)
    q = enc.encode_text(["a red square"])[0]
    truth = [paths[i] for i in np.argsort(-(vecs @ q))[:5]]
    res = _cli("search", str(out), "a red square", "-k", "5", "--json")
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)["results"]
    # near-ties (within float noise of batch composition) may swap places: compare scores
    # of the paths returned, and the ranked scores, instead of the exact path order
    score_of = dict(zip(paths, (vecs @ q).tolist()))
    assert len(hits) == len(truth) and all(h["path"] in score_of for h in hits)
    np.testing.assert_allclose([h["score"] for h in hits], [score_of[h["path"]] for h in hits], atol=1e-4)
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(vecs @ q)[::-1][:5], atol=1e-4)
    img = _cli("search", str(out), "--image", str(folder.good[5]), "-k", "1", "--json")
    top = json.loads(img.stdout)["results"][0]
    assert top["path"] == str(folder.good[5]) and top["score"] == pytest.approx(1.0, abs=1e-4)
    with Index.open(out, read_only=True) as idx:
        assert len(idx) == 16 and idx.journal_size() == 0 and idx.bundle == enc.bundle.name
