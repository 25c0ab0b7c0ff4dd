"""Image inputs: from a JSON string (base64 or a data URI) to bytes, and from bytes to model pixels.

The service never fetches a URL on a client's behalf (no server-side requests), and a
string from a request is never handed to the library as a *path*: it is base64 or it is
refused, so no request can make the service read a file. Decoding and preprocessing
(:func:`prepare_image`) run in the decode thread pool, never on the event loop; the
library's decoder refuses decompression bombs and non-images with an error naming the
input.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import bad_request

URL_PREFIXES = ("http://", "https://", "ftp://", "file:", "s3://", "gs://")


def image_bytes(value: Any, label: str) -> bytes:
    """The bytes of an image given in JSON as base64 or a ``data:image/...;base64,`` URI.

    Raises a 400 :class:`~crossmodal.serve.errors.ServeError` naming ``label`` for URLs,
    non-strings, other data URIs and invalid or empty base64.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise bad_request(f"{label}: an image must be a base64 string or a data URI, got {type(value).__name__}",
                          "invalid_type")
    s = value.strip()
    if s[:8].lower().startswith(URL_PREFIXES):
        raise bad_request(f"{label} is a URL ({s[:60]!r}); the service does not fetch URLs: send the image itself "
                          "(base64, a data URI, a multipart upload or the raw bytes)", "url_not_supported")
    if s[:5].lower() == "data:":
        header, sep, payload = s.partition(",")
        if not sep or not header.lower().endswith(";base64"):
            raise bad_request(f"{label}: a data URI must be base64-encoded ('data:image/png;base64,...'), "
                              f"got {header[:60]!r}", "invalid_data_uri")
        s = payload
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        try:  # line-wrapped base64 (MIME style) is still base64
            data = base64.b64decode("".join(s.split()), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{label} is not valid base64 (or a data URI); encode the image file's bytes "
                              "with standard base64", "invalid_base64") from None
    if not data:
        raise bad_request(f"{label} is empty", "empty_input")
    return data


def prepare_image(tower: Any, value: Any, index: int) -> NDArray[np.float32]:
    """Decode and preprocess input ``index`` (bytes or a JSON string) to the tower's (3, S, S) pixels."""
    data = image_bytes(value, f"input #{index}")
    return tower.preprocess_one(data, index=index)


__all__ = ["image_bytes", "prepare_image", "URL_PREFIXES"]
