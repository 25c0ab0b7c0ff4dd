"""crossmodal.distributed on a local Ray cluster (2 CPUs): embedding parity, error rows, resumable
shards after a killed job, import vs `index build`, and the runtime staying free of Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.cli import main
from crossmodal.errors import IncompatibleTowersError, InputError
from crossmodal.index import Index, content_key, text_key
from helpers.datasets import make_image_folder

VARIANT = "cpu-int8"
# cpu-int8 quantizes activations per batch, so its vectors move by ~1e-4 in cosine with the
# batch an image shares (the library's own encode_image too): int8 parity is per image.
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_address() -> str:
    """A local Ray cluster with 2 CPUs for this module; its GCS address lets a subprocess join it."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return make_image_folder(tmp_path_factory.mktemp("distributed") / "photos")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embedding_through_ray_equals_the_library(ray_address: str, tiny_clip_bundle: Path, folder) -> None:
    import ray

    from crossmodal.distributed import embed_dataset

    files = sorted(folder.good + folder.corrupt + folder.duplicates)
    ds = ray.data.from_items([{"path": str(p), "tag": i} for i, p in enumerate(files)])
    rows = embed_dataset(ds, tiny_clip_bundle, variant="cpu-fp32", batch_size=3, concurrency=2).take_all()
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(files) and set(by_path) == {str(p) for p in files}
    assert sorted(r["tag"] for r in rows) == list(range(len(files)))  # other columns pass through

    good = [p for p in files if p not in folder.corrupt]
    ref = crossmodal.load(tiny_clip_bundle, variant="cpu-fp32", modality="image").encode_image([str(p) for p in good])
    got = np.stack([np.asarray(by_path[str(p)]["vector"], np.float32) for p in good])
    assert got.shape == ref.shape
    assert _cos(got, ref).min() >= 0.99999
    for p in good:
        r = by_path[str(p)]
        key, sha = content_key(p.read_bytes())
        assert (r["key"], r["sha256"], r["error"]) == (key, sha, None)  # the key `index build` gives the file

    # an undecodable or empty file is a row with the reason and no vector, not a failed job
    for p in folder.corrupt:
        r = by_path[str(p)]
        assert r["vector"] is None and r["error"]
    assert by_path[str(folder.root / "bad" / "empty.jpg")]["error"] == "empty file"
    assert "not a readable image" in by_path[str(folder.root / "bad" / "text_as.png")]["error"]


def test_int8_parity_when_a_ray_batch_runs_the_model_in_sub_batches(ray_address: str, tiny_clip_bundle: Path,
                                                                    folder) -> None:
    import ray

    from crossmodal.distributed import embed_dataset
    from crossmodal.distributed.embed import sub_batch_size

    # One Ray batch of 20 rows; the actor runs the model on 8 + 8 + 4 of them as they decode.
    files = sorted(folder.good + folder.corrupt + folder.duplicates)
    size = sub_batch_size(len(files))
    assert (len(files), size) == (20, 8)
    ds = ray.data.from_items([{"path": str(p)} for p in files])
    rows = embed_dataset(ds, tiny_clip_bundle, variant=VARIANT, batch_size=len(files)).take_all()
    assert sorted(r["path"] for r in rows) == [str(p) for p in files]
    enc = crossmodal.load(tiny_clip_bundle, variant=VARIANT, modality="image")
    for start in range(0, len(rows), size):  # the library embeds each sub-batch's good images in one call
        good = [r for r in rows[start:start + size] if r["error"] is None]
        ref = enc.encode_image([r["path"] for r in good], batch_size=len(good))
        got = np.stack([np.asarray(r["vector"], np.float32) for r in good])
        assert _cos(got, ref).min() >= 0.99999
    assert {r["path"] for r in rows if r["error"]} == {str(p) for p in folder.corrupt}


def test_image_bytes_and_texts(ray_address: str, tiny_clip_bundle: Path, folder) -> None:
    import ray

    from crossmodal.distributed import embed_dataset

    enc = crossmodal.load(tiny_clip_bundle, variant=VARIANT)
    ds = ray.data.read_binary_files([str(p) for p in folder.good[:5] + folder.corrupt[1:2]], include_paths=True)
    rows = {r["path"]: r for r in embed_dataset(ds, tiny_clip_bundle, variant=VARIANT, batch_size=1).take_all()}
    assert all("bytes" not in r for r in rows.values())  # image bytes are not carried into the result
    ref = np.concatenate([enc.encode_image([str(p)]) for p in folder.good[:5]])
    got = np.stack([np.asarray(rows[str(p)]["vector"], np.float32) for p in folder.good[:5]])
    assert _cos(got, ref).min() >= 0.99999
    assert rows[str(folder.corrupt[1])]["vector"] is None and rows[str(folder.corrupt[1])]["error"]

    texts = ["a red square", "two dogs in the snow", "", "a blue circle " * 30]
    ds = ray.data.from_items([{"text": t} for t in texts] + [{"text": None}])
    rows = embed_dataset(ds, tiny_clip_bundle, variant=VARIANT, modality="text", batch_size=1).take_all()
    by_text = {r["text"]: r for r in rows}
    got = np.stack([np.asarray(by_text[t]["vector"], np.float32) for t in texts])
    assert _cos(got, np.concatenate([enc.encode_text([t]) for t in texts])).min() >= 0.99999
    assert [by_text[t]["key"] for t in texts] == [text_key(t)[0] for t in texts]
    assert by_text[None]["vector"] is None and by_text[None]["error"] == "text is not a string (NoneType)"


def test_embed_dataset_checks_the_bundle_before_starting_actors(ray_address: str, tiny_clip_bundle: Path) -> None:
    import ray

    from crossmodal.distributed import embed_dataset

    ds = ray.data.from_items([{"path": "x.jpg"}])
    with pytest.raises(crossmodal.ArtifactError, match="no gpu-fp16 variant"):
        embed_dataset(ds, tiny_clip_bundle, variant="gpu-fp16")
    with pytest.raises(InputError, match="modality"):
        embed_dataset(ds, tiny_clip_bundle, modality="audio")
    with pytest.raises(InputError, match="concurrency"):
        embed_dataset(ds, tiny_clip_bundle, concurrency=0)


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import crossmodal.distributed.writer as writer
    real_write = writer.write_shard
    def slow_write(*args, **kwargs):
        meta = real_write(*args, **kwargs)
        print("SHARD", flush=True)
        time.sleep(0.5)
        return meta
    writer.write_shard = slow_write
    from crossmodal.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _shard_stats(shards_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards_dir.glob("shard-*.parquet")}


def test_killed_job_resumes_without_reembedding_finished_shards(ray_address: str, tiny_clip_bundle: Path,
                                                               folder, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out, shards_dir = tmp_path / "idx", tmp_path / "shards"
    build = ["index", "build", str(tiny_clip_bundle), "--images", str(folder.root), "--out", str(out), "--ray",
             "--shards-dir", str(shards_dir), "--shard-size", "2", "--batch-size", "2", "--variant", VARIANT,
             "--no-progress", "--json"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *build, "--ray-address", ray_address],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    assert [proc.stdout.readline().strip() for _ in range(2)] == ["SHARD"] * 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    before = _shard_stats(shards_dir)
    total = 10  # 16 good + 3 corrupt + 1 duplicate file, 2 per shard
    assert 2 <= len(before) < total

    assert main(build) == 0  # joins this module's cluster (ray is initialised here)
    report = _json_out(capsys)
    emb = report["embedding"]
    assert (emb["shards"], emb["reused"], emb["written"]) == (total, len(before), total - len(before))
    assert emb["embedded"] == 2 * (total - len(before))  # only the unfinished shards' items were embedded
    after = _shard_stats(shards_dir)
    assert len(after) == total and all(after[name] == st for name, st in before.items())  # untouched
    assert report["added"] == 16 and report["already_indexed"] == 1
    assert {Path(s["path"]) for s in report["skipped"]} >= set(folder.corrupt)

    assert main(build) == 0  # everything written and indexed: nothing is embedded or added
    again = _json_out(capsys)
    assert (again["embedding"]["written"], again["embedding"]["actors"], again["added"]) == (0, 0, 0)


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    """The JSON report the last command printed (its last line of stdout)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _top_keys(index_dir: Path, queries: np.ndarray, k: int) -> list[list[int]]:
    with Index.open(index_dir, read_only=True) as idx:
        return [[h.key for h in hits] for hits in idx.search(queries, k=k, exact=True)]


def test_import_then_search_finds_what_index_build_finds(ray_address: str, tiny_clip_bundle: Path, folder,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # fp32: its vectors do not depend on the batch an image shares. int8's move by ~1e-4 in
    # cosine with the batch (Ray's actor embeds sub-batches of its Ray batch, `index build` runs
    # of 32), enough to swap near-tied neighbours of this tiny random model.
    variant = "cpu-fp32"
    plain, shards_dir = tmp_path / "plain", tmp_path / "shards"
    assert main(["index", "build", str(tiny_clip_bundle), "--images", str(folder.root), "--out", str(plain),
                 "--variant", variant, "--no-progress"]) == 0
    assert main(["index", "build", str(tiny_clip_bundle), "--images", str(folder.root), "--out",
                 str(tmp_path / "viaray"), "--ray", "--shards-dir", str(shards_dir), "--shard-size", "5",
                 "--variant", variant, "--no-progress"]) == 0
    # the shards imported once more into a new index (created from the shards' metadata)
    imported = tmp_path / "imported"
    assert main(["index", "import", str(imported), str(shards_dir), "--no-progress", "--json"]) == 0
    report = _json_out(capsys)
    assert (report["shards"], report["rows"], report["added"], len(report["skipped"])) == (4, 20, 16, 3)

    enc = crossmodal.load(tiny_clip_bundle, variant=variant)
    queries = np.concatenate([enc.encode_text(["a red square", "a green circle", "yellow text"]),
                              enc.encode_image([str(folder.good[3]), str(folder.good[9])])])
    want = _top_keys(plain, queries, 5)
    assert _top_keys(tmp_path / "viaray", queries, 5) == want
    assert _top_keys(imported, queries, 5) == want
    with Index.open(plain, read_only=True) as a, Index.open(imported, read_only=True) as b:
        assert a.keys() == b.keys() and len(a) == 16
        assert {r.path for r in a.items()} == {r.path for r in b.items()}
        assert b.space == a.space and b.info["variant"] == variant
        assert b.info["bundle_path"] == str(tiny_clip_bundle)
    # importing again adds nothing
    assert main(["index", "import", str(imported), str(shards_dir), "--no-progress", "--json"]) == 0
    assert _json_out(capsys)["added"] == 0


def test_captions_through_ray_are_embedded_as_index_build_embeds_them(ray_address: str, tiny_clip_bundle: Path,
                                                                      folder, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.retriever import Retriever

    records = []
    for i, p in enumerate(folder.good + folder.duplicates + folder.corrupt):
        rel = p.relative_to(folder.root).as_posix()
        colour = folder.colour_of.get(p, "grey")
        records.append({"image": rel, "caption": f"a {colour} thing, picture {i}"})
        if i % 3 == 0:
            records.append({"image": rel, "caption": f"the {colour} one"})
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in records))
    common = [str(tiny_clip_bundle), "--images", str(folder.root), "--captions", str(captions), "--variant",
              "cpu-fp32", "--no-progress", "--json"]
    assert main(["index", "build", *common, "--out", str(tmp_path / "plain")]) == 0
    plain = _json_out(capsys)
    ray_build = ["index", "build", *common, "--out", str(tmp_path / "viaray"), "--ray", "--shard-size", "7"]
    assert main(ray_build) == 0
    viaray = _json_out(capsys)
    assert viaray["captions_added"] == plain["captions_added"] > 16 and viaray["added"] == plain["added"] == 16
    assert viaray["captions"]["written"] == viaray["captions"]["shards"] > 1
    assert sorted(p.name for p in (tmp_path / "viaray.shards").glob("shard-text-*.parquet"))

    enc = crossmodal.load(tiny_clip_bundle, variant="cpu-fp32")
    with Index.open(tmp_path / "plain", read_only=True) as a, Index.open(tmp_path / "viaray", read_only=True) as b:
        for tower in ("image", "text"):
            assert a.keys(tower) == b.keys(tower)
            assert {(r.path, r.caption) for r in a.items(tower=tower)} == {(r.path, r.caption)
                                                                           for r in b.items(tower=tower)}
        ra, rb = Retriever(enc, a), Retriever(enc, b)
        for q in ("a red thing", "the blue one", "yellow picture 9"):
            for kw in ({"fuse": "captions"}, {"fuse": "captions", "fuse_mode": "rrf"}, {"tower": "text"}):
                want, got = ra.search_text(q, k=6, **kw), rb.search_text(q, k=6, **kw)
                assert [h.key for h in got] == [h.key for h in want]
                np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    assert main(ray_build) == 0  # a rerun embeds and adds nothing
    again = _json_out(capsys)
    assert (again["captions"]["written"], again["added"], again["captions_added"]) == (0, 0, 0)


def test_parquet_list_of_images_with_captions(ray_address: str, tiny_clip_bundle: Path, folder,
                                              tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = folder.good[:6]
    (tmp_path / "lists").mkdir()
    rel = [os.path.relpath(p, tmp_path / "lists") for p in listed]
    caps = [[f"picture {i}"] + ([f"another view {i}"] if i % 2 else []) for i in range(6)]  # list column
    pq.write_table(pa.table({"path": rel, "caption": caps}), tmp_path / "lists" / "images.parquet")
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_clip_bundle), "--images", str(tmp_path / "lists" / "images.parquet"),
                 "--out", str(out), "--ray", "--actors", "1", "--no-progress"]) == 0
    with Index.open(out, read_only=True) as idx:
        assert idx.root is None
        got = {r.path: r.caption for r in idx.items(tower="image")}  # an image stores its first caption
        texts = {(r.path, r.caption) for r in idx.items(tower="text")}  # every caption is embedded
    assert got == {str(p): f"picture {i}" for i, p in enumerate(listed)}
    assert texts == {(str(p), c) for p, cs in zip(listed, caps) for c in cs}


def _shard(tmp_path: Path, space: str, dim: int, rows: list[dict]) -> Path:
    import pyarrow as pa

    from crossmodal.distributed.shards import Embedding, ShardPlan, write_shard

    cols = {c: [r.get(c) for r in rows] for c in ("key", "path", "caption", "sha256", "error")}
    vecs = np.stack([r["vector"] for r in rows]).astype(np.float32)
    from crossmodal.distributed.embed import vector_column

    table = pa.table({**{c: pa.array(v) for c, v in cols.items() if c != "key"},
                      "key": pa.array(cols["key"], pa.int64()),
                      "vector": vector_column(vecs, np.array([r.get("error") is None for r in rows]))})
    path = tmp_path / f"shard-000000-{space}.parquet"
    write_shard(path, table, Embedding("b", space, dim, "cpu-fp32"), ShardPlan(0, (), "0" * 64))
    return path


def test_import_refuses_another_space_and_damaged_keys(tmp_path: Path) -> None:
    from crossmodal.distributed import import_shards

    rng = np.random.default_rng(0)
    vec = rng.normal(size=8).astype(np.float32)
    key, sha = content_key(b"one")
    good = _shard(tmp_path, "s1", 8, [{"key": key, "sha256": sha, "path": "/a.jpg", "vector": vec},
                                      {"key": None, "path": "/b.jpg", "error": "empty file", "vector": vec * 0}])
    other = _shard(tmp_path, "s2", 8, [{"key": key, "sha256": sha, "path": "/a.jpg", "vector": vec}])
    damaged = _shard(tmp_path, "s3", 8, [{"key": key + 1, "sha256": sha, "path": "/a.jpg", "vector": vec}])
    with Index.create(tmp_path / "idx", bundle="b", space="s1", dim=8) as idx:
        with pytest.raises(IncompatibleTowersError, match="space 's2'"):
            import_shards(idx, [good, other], progress=False)
        assert len(idx) == 0  # refused before anything was added
        report = import_shards(idx, [good], progress=False)
        assert (report.added, [e.reason for e in report.errors]) == (1, ["empty file"])
        assert idx.get(key).path == "/a.jpg"
    with Index.create(tmp_path / "idx3", bundle="b", space="s3", dim=8) as idx:
        with pytest.raises(InputError, match="does not match its sha256"):
            import_shards(idx, [damaged], progress=False)
    with pytest.raises(InputError, match="not a crossmodal shard"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
        from crossmodal.distributed.shards import read_shard

        read_shard(tmp_path / "plain.parquet")


def test_runtime_and_cli_never_import_ray(tmp_path: Path) -> None:
    code = ("import sys, crossmodal, crossmodal.cli, crossmodal.distributed, crossmodal.index; "
            "bad = [m for m in ('ray', 'pyarrow') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    # without the extra: one clear error naming the install command
    missing = ("import sys; sys.modules['ray'] = None\n"
               "from crossmodal.distributed.extras import import_ray, MissingExtraError\n"
               "try:\n    import_ray()\nexcept MissingExtraError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, timeout=120, check=True)
    assert "pip install 'crossmodal[ray]'" in out.stdout


def test_cli_refuses_ray_options_without_ray_and_captions_beside_a_parquet_list(tiny_clip_bundle: Path, folder, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    listing = tmp_path / "images.parquet"
    pq.write_table(pa.table({"path": [str(folder.good[0])]}), listing)
    base = ["index", "build", str(tiny_clip_bundle), "--out", str(tmp_path / "idx"), "--no-progress"]
    assert main([*base, "--images", str(folder.root), "--actors", "2"]) == 2
    assert "--actors needs --ray" in capsys.readouterr().err
    assert main([*base, "--images", str(listing)]) == 2
    assert "parquet list of images is read by `index build --ray`" in capsys.readouterr().err
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "x.png", "caption": "x"}\n')
    assert main([*base, "--images", str(listing), "--ray", "--captions", str(captions)]) == 2
    assert "--captions is read with a folder" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()  # refused before creating anything
    assert main(["index", "import", str(tmp_path / "idx"), str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
