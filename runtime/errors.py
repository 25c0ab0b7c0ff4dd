"""The runtime's exception hierarchy.

Every error the runtime raises on purpose derives from :class:`CrossmodalError`,
so a service can catch one class. Messages name the offending input and say
what to do about it.
"""

from __future__ import annotations


class CrossmodalError(Exception):
    """Base class of every error raised on purpose by crossmodal."""


class ArtifactError(CrossmodalError):
    """A bundle, manifest or model file is missing, malformed or corrupt."""


class IncompatibleTowersError(ArtifactError):
    """Two towers (or a tower and an index) do not share one embedding space."""


class ProviderUnavailableError(CrossmodalError):
    """The execution provider a variant needs is not installed on this machine."""


class InputError(CrossmodalError, ValueError):
    """User input (an image, a text, a vector, an argument) is unusable."""


class ImageInputError(InputError):
    """An image could not be read or decoded."""


class TextInputError(InputError):
    """A text input is not a string or is otherwise unusable."""


class IndexStoreError(CrossmodalError):
    """An index on disk is missing, corrupt or inconsistent."""


class ParityError(CrossmodalError):
    """An exported graph does not reproduce its reference within the threshold."""


__all__ = [
    "CrossmodalError",
    "ArtifactError",
    "IncompatibleTowersError",
    "ProviderUnavailableError",
    "InputError",
    "ImageInputError",
    "TextInputError",
    "IndexStoreError",
    "ParityError",
]
