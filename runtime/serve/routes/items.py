"""``POST /v1/items``, ``GET`` / ``DELETE /v1/items/{key}``: change the index while it is being searched.

Add (JSON): ``{"items": [{"image": <base64 or data URI>, "caption": <optional str>}, ...]}``
(or one item's fields at the top level); multipart: image file parts in order, with
``caption`` fields in the same order (all or none); raw image body with
``?caption=...``. Each new image is embedded, stored as ``<uploads>/<sha256>.<ext>`` and
added under its content key (the same key ``crossmodal index build`` gives the same
bytes); a caption is stored as the item's caption and, when the bundle has a text tower,
embedded into the index's text tower (image -> caption search), as ingestion does.
The response returns only when the index journal holds the items (durable, as
``crossmodal index add``): ``{"object": "list", "data": [{"index", "key", "path",
"caption", "added"}]}``; ``added`` is false for content already indexed (its
existing path and caption are returned; a new caption is still embedded for it). Failed
inputs get ``{"index", "error"}`` entries (all failed: the first error's status).

``GET /v1/items/{key}``: the item's metadata. ``DELETE /v1/items/{key}``: remove the
image item, its caption vectors and its uploaded file (if the service stored it).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..body import read_body
from ..decode import image_bytes
from ..errors import as_serve_error, bad_request, item_error, not_found
from ..service import Service
from ..uploads import remove_upload, store_upload
from .common import check_count, json_response, key_param, service_of, stats_of


async def add_items(request: Request) -> Response:
    service = service_of(request)
    cfg = service.config
    index = service.require_index(writable=True)
    body = await read_body(request, cfg.max_body_bytes, cfg.max_inputs)
    images, captions = _items(body)
    check_count(service, len(images), "items")
    stats = stats_of(request)
    # Base64 decoding runs in the decode pool (a large payload would stall the loop).
    decoded = await asyncio.get_running_loop().run_in_executor(service.decode_pool, _decode_all, images)
    errors = {i: d for i, d in enumerate(decoded) if isinstance(d, BaseException)}
    ok = [i for i in range(len(images)) if i not in errors]
    if ok:
        job = await service.embed_images([decoded[i] for i in ok], stats, request)
        for j, i in enumerate(ok):
            if j in job.errors:
                errors[i] = job.errors[j]
        good = [(i, decoded[i], job.out[j]) for j, i in enumerate(ok) if j not in job.errors]
    else:
        good = []
    if not good:
        raise as_serve_error(errors[min(errors)])
    caption_rows: dict[int, np.ndarray] = {}
    with_caption = [i for i, _, _ in good if captions[i]]
    if with_caption and "text" in service.batchers:
        texts = await service.embed_texts([captions[i] for i in with_caption], stats, request)
        caption_rows = {i: texts.job.out[j] for j, i in enumerate(with_caption) if j not in texts.job.errors}
    entries = [(i, data, vec, captions[i], caption_rows.get(i)) for i, data, vec in good]
    results = await service.in_writer(_write, service, index, entries)
    data_out: list[dict[str, Any]] = []
    for i in range(len(images)):
        if i in errors:
            data_out.append({"object": "error", "index": i, "error": item_error(errors[i])})
        else:
            data_out.append({"object": "item", "index": i, **results[i]})
    return json_response({"object": "list", "data": data_out}, headers=stats.headers())


async def get_item(request: Request) -> Response:
    service = service_of(request)
    index = service.require_index()
    key = key_param(request)
    rec = await service.in_writer(index.get, key)
    if rec is None:
        raise not_found(f"no item with key {key} in the index", "item_not_found")
    return json_response({"object": "item", "key": str(rec.key), "path": rec.path, "caption": rec.caption,
                          "sha256": rec.sha256})


async def delete_item(request: Request) -> Response:
    service = service_of(request)
    index = service.require_index(writable=True)
    key = key_param(request)
    removed = await service.in_writer(_remove, service, index, key)
    if removed is None:
        raise not_found(f"no item with key {key} in the index", "item_not_found")
    return json_response({"object": "item.deleted", "key": str(key), "deleted": True, **removed})


def _decode_all(images: list[Any]) -> list[bytes | BaseException]:
    out: list[bytes | BaseException] = []
    for i, img in enumerate(images):
        try:
            out.append(image_bytes(img, f"item #{i}"))
        except Exception as exc:  # noqa: BLE001 - one bad item fails alone
            out.append(exc)
    return out


def _items(body: Any) -> tuple[list[Any], list[str | None]]:
    if body.kind == "json":
        opts = body.json
        raw = opts.get("items", [opts] if "image" in opts else None)
        if not isinstance(raw, list):
            raise bad_request("send {\"items\": [{\"image\": <base64>, \"caption\": <optional>}, ...]}",
                              "invalid_type")
        images, captions = [], []
        for i, it in enumerate(raw):
            if not isinstance(it, dict) or "image" not in it:
                raise bad_request(f"item #{i} must be an object with an \"image\" field", "invalid_type")
            cap = it.get("caption")
            if cap is not None and not isinstance(cap, str):
                raise bad_request(f"item #{i}: caption must be a string", "invalid_type")
            images.append(it["image"])
            captions.append(cap or None)
        return images, captions
    images = [data for _, _, data in body.files]
    caps: list[str | None] = list(body.fields.get("caption", []))  # type: ignore[arg-type]
    if caps and len(caps) != len(images):
        raise bad_request(f"{len(caps)} caption fields for {len(images)} images: send one per image or none",
                          "invalid_value")
    return images, [c or None for c in caps] if caps else [None] * len(images)


def _write(service: Service, index: Any, entries: list[tuple[int, bytes, np.ndarray, str | None, Any]]
           ) -> dict[int, dict[str, Any]]:
    """Writer thread: store the files, then add image (and caption) vectors in one journal commit each."""
    from ...index import key_from_sha256

    assert service.uploads_dir is not None
    metas, vecs, out = [], [], {}
    text_metas, text_vecs = [], []
    for i, data, vec, caption, cap_vec in entries:
        sha = hashlib.sha256(data).hexdigest()
        key = key_from_sha256(sha)
        known = index.get(key)
        if known is not None and known.path:
            # Already indexed (by a build or an earlier upload): no second file, its record stands.
            path, caption_kept = known.path, known.caption
        else:
            path, caption_kept = str(store_upload(service.uploads_dir, data, sha)), caption
            metas.append({"path": path, "caption": caption, "sha256": sha})
            vecs.append(vec)
        out[i] = {"key": str(key), "path": path, "caption": caption_kept}
        if cap_vec is not None:
            # The caption's key follows ingestion's rule (image content + caption text).
            text_metas.append({"path": path, "caption": caption,
                               "sha256": hashlib.sha256(f"{sha}\n{caption}".encode("utf-8")).hexdigest()})
            text_vecs.append(cap_vec)
    added = {int(k) for k in index.add(np.stack(vecs), metas)} if vecs else set()
    n = len(added)
    if text_vecs:
        n += len(index.add(np.stack(text_vecs), text_metas, tower="text"))
    for r in out.values():
        r["added"] = int(r["key"]) in added
    service.saved_if_due(n)
    return out


def _remove(service: Service, index: Any, key: int) -> dict[str, Any] | None:
    rec = index.get(key)
    if rec is None:
        return None
    index.remove([key])
    captions = index.find_path(rec.path, tower="text") if rec.path else []
    if captions:
        index.remove(captions, tower="text")
    still_used = bool(rec.path and index.find_path(rec.path))
    file_removed = False if still_used else remove_upload(service.uploads_dir, rec.path)
    return {"captions_removed": len(captions), "file_removed": file_removed}


__all__ = ["add_items", "get_item", "delete_item"]
