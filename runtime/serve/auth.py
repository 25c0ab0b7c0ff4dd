"""Bearer-key access control: constant-time comparison; the key is never logged or echoed."""

from __future__ import annotations

import hmac

OPEN_PREFIXES = ("/health/",)


class BearerAuth:
    """Checks ``Authorization: Bearer <key>`` against one key (``None``: every request passes)."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode("utf-8") if key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def allows(self, path: str, authorization: bytes | None) -> bool:
        """Whether a request to ``path`` with this ``Authorization`` header value may proceed."""
        if self._key is None or path.startswith(OPEN_PREFIXES):
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # compare_digest runs in time independent of where the strings differ.
        return hmac.compare_digest(token.strip(), self._key)

    def __repr__(self) -> str:
        return f"BearerAuth(enabled={self.enabled})"


__all__ = ["BearerAuth", "OPEN_PREFIXES"]
