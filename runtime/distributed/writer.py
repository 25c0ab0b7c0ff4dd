"""The shard writer: embed a list of inputs on Ray into parquet shards, resumably.

The inputs are cut into shards (:func:`~crossmodal.distributed.shards.plan_shards`); the
shards whose file already exists are skipped, the rest become one Ray Dataset (one block
per shard) embedded by :func:`~crossmodal.distributed.embed.embed_dataset`. The driver
collects the streamed results and writes each shard as soon as all of its rows are in,
so a killed job keeps every shard it finished and a re-run embeds only the others.
Vectors flow through the driver (2 KB per image at dim 512: ~3 MB/s at 1,500 images/s),
which keeps the shard directory local to the driver and the writes atomic in one place.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from ..inputs import positive_int
from ..progress import progress_bar
from ..variants import DEFAULT_VARIANT
from .embed import IMAGE_PATH, OF_IMAGE, TEXT, check_bundle, embed_dataset
from .extras import connect, import_pyarrow, import_ray
from .shards import Embedding, ShardItem, ShardPlan, finished, plan_shards, write_shard

SHARD_COLUMN = "shard"


@dataclass
class ShardRun:
    """What one :func:`embed_to_shards` run did."""

    shards_dir: str
    modality: str = "image"
    shards: list[Path] = field(default_factory=list)  # every planned shard file, in order
    reused: int = 0       # shards already written by an earlier run
    written: int = 0      # shards written by this run
    embedded: int = 0     # rows embedded by this run (error rows included)
    errors: int = 0       # rows of this run's shards that could not be embedded
    actors: int = 0       # embedding actors started (0: every shard was already written)
    ray_start_seconds: float = 0.0  # joining or starting the Ray cluster
    seconds: float = 0.0  # the whole run, Ray's start included

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        what = "images" if self.modality == "image" else "captions" if self.modality == "text" else self.modality
        return (f"{self.shards_dir}: {len(self.shards)} shard(s) of {what}; {self.written} written "
                f"({self.embedded} item(s) "
                f"embedded, {self.errors} failed), {self.reused} already written; {self.seconds:.1f} s "
                f"({self.rows_per_second:.1f} items/s)")

    def to_dict(self) -> dict[str, Any]:
        return {"shards_dir": self.shards_dir, "shards": len(self.shards), "written": self.written,
                "reused": self.reused, "embedded": self.embedded, "errors": self.errors,
                "actors": self.actors, "ray_start_seconds": round(self.ray_start_seconds, 3),
                "seconds": round(self.seconds, 3), "items_per_second": round(self.rows_per_second, 2)}


class RaySession:
    """Joins Ray the first time a run needs it and, if that started a local cluster, shuts it
    down on :meth:`close`: several runs (images, then their captions) share one cluster."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._started: bool | None = None  # None: not joined yet

    def join(self) -> float:
        """Join (or start) Ray unless done already; returns the seconds it took."""
        if self._started is not None:
            return 0.0
        t0 = time.monotonic()
        self._started = connect(self.address)
        return time.monotonic() - t0

    def close(self) -> None:
        if self._started:
            import_ray().shutdown()
        self._started = None


def _block(plan: ShardPlan, modality: str) -> Any:
    pa = import_pyarrow()
    paths = [it.path for it in plan.items]
    captions = [it.caption for it in plan.items]
    cols = {IMAGE_PATH: pa.array(paths, pa.string()), "caption": pa.array(captions, pa.string()),
            SHARD_COLUMN: pa.array([plan.number] * len(plan.items), pa.int64())}
    if modality == "text":
        cols[TEXT] = cols["caption"]
        cols[OF_IMAGE] = pa.array([it.of_sha256 for it in plan.items], pa.string())
    return pa.table(cols)


def caption_items(image_shards: Sequence[Path], captions: Mapping[str, Sequence[str]]) -> list[ShardItem]:
    """The caption items of the images embedded in ``image_shards``: one per caption of
    ``captions[path]`` for every row that has a vector (an undecodable file gets none, as in
    ``index build --captions``), keyed by the image's content and the caption."""
    pa = import_pyarrow()
    items = []
    for shard in image_shards:
        table = pa.parquet.read_table(shard, columns=["path", "sha256", "error"])
        for path, sha, error in zip(*(table.column(c).to_pylist() for c in ("path", "sha256", "error"))):
            if error is None and sha is not None:
                items.extend(ShardItem(path, c, sha) for c in captions.get(path, ()))
    return items


def embed_to_shards(items: Sequence[ShardItem], bundle: str | os.PathLike[str], shards_dir: str | os.PathLike[str],
                    *, variant: str = DEFAULT_VARIANT, modality: str = "image", shard_size: int = 1024,
                    batch_size: int = 32, concurrency: int | None = None, num_cpus: float = 1,
                    num_gpus: float = 0, threads: int | None = None, ray_address: str | None = None,
                    progress: bool = True, stream: IO[str] | None = None,
                    session: RaySession | None = None) -> ShardRun:
    """Embed ``items`` on Ray into shard files under ``shards_dir``.

    Image items are read by the workers from their paths (shared storage on a cluster);
    text items embed their caption. Shards already in ``shards_dir`` (same inputs, same
    bundle and variant) are not embedded again; Ray is joined only when some are missing:
    the running Ray when ``ray.init`` was called, else the cluster at ``ray_address``, else a
    local one (started and shut down here). The embedding arguments are those of
    :func:`~crossmodal.distributed.embed.embed_dataset`; ``concurrency=None`` starts as many
    actors as the cluster's CPUs (or GPUs, with ``num_gpus``) hold. ``session``: a
    :class:`RaySession` shared with other runs (then left open here). Returns a :class:`ShardRun`.

    Captions (``modality="text"``) go to ``shard-text-*`` files: give the items of
    :func:`caption_items` to key them as caption items of their images.
    """
    t0 = time.monotonic()
    shard_size = positive_int("shard_size", shard_size)
    info = check_bundle(bundle, variant, modality)
    embedding = Embedding(info.name, info.space, info.dim, variant, modality, os.path.abspath(bundle))
    plans = plan_shards(items, shard_size, embedding, stat_files=modality == "image")
    out_dir = Path(shards_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = ShardRun(shards_dir=str(out_dir), modality=modality, shards=[out_dir / p.name for p in plans])
    pending = [p for p in plans if not finished(out_dir / p.name, p)]
    run.reused = len(plans) - len(pending)
    if not pending:
        run.seconds = time.monotonic() - t0
        return run
    own = session is None
    ray_session = RaySession(ray_address) if session is None else session
    try:
        run.ray_start_seconds = ray_session.join()
        if concurrency is None:  # an actor per pending shard at most: more would load the bundle for nothing
            concurrency = min(cluster_actors(num_cpus, num_gpus), len(pending))
        run.actors = concurrency
        _embed(pending, run, embedding, bundle, modality, batch_size=batch_size, concurrency=concurrency,
               num_cpus=num_cpus, num_gpus=num_gpus, threads=threads, progress=progress, stream=stream)
    finally:
        if own:
            ray_session.close()
        run.seconds = time.monotonic() - t0
    return run


def cluster_actors(num_cpus: float, num_gpus: float) -> int:
    """How many actors of ``num_cpus`` CPUs (and ``num_gpus`` GPUs) the connected cluster holds at once."""
    resources = import_ray().cluster_resources()
    if num_gpus:
        return max(1, int(resources.get("GPU", 0) // num_gpus))
    return max(1, int(resources.get("CPU", 1) // num_cpus))


def _embed(pending: list[ShardPlan], run: ShardRun, embedding: Embedding, bundle: str | os.PathLike[str],
           modality: str, *, progress: bool, stream: IO[str] | None, **embed_args: Any) -> None:
    ray, pa = import_ray(), import_pyarrow()
    pc = pa.compute
    ds = ray.data.from_arrow([_block(p, modality) for p in pending])
    embedded = embed_dataset(ds, bundle, variant=embedding.variant, modality=modality, **embed_args)
    out_dir = Path(run.shards_dir)
    by_number = {p.number: p for p in pending}
    parts: dict[int, list[Any]] = {p.number: [] for p in pending}
    have = dict.fromkeys(by_number, 0)
    bar = progress_bar(len(pending), desc="shards", enabled=progress, stream=stream)
    try:
        for batch in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
            for number in pc.unique(batch.column(SHARD_COLUMN)).to_pylist():
                part = batch.filter(pc.equal(batch.column(SHARD_COLUMN), number))
                parts[number].append(part)
                have[number] += part.num_rows
                plan = by_number[number]
                if have[number] == len(plan.items):
                    meta = write_shard(out_dir / plan.name, pa.concat_tables(parts.pop(number)), embedding, plan)
                    run.written += 1
                    run.embedded += meta.rows
                    run.errors += meta.errors
                    bar.update()
    finally:
        bar.close()


__all__ = ["embed_to_shards", "caption_items", "ShardRun", "RaySession"]
