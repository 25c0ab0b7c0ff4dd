"""Data package ``crossmodal.models``: the model cards in ``cards/`` (read by :mod:`crossmodal.export.resources`).

Exported bundles that users write under ``models/<name>/`` are not part of it
(gitignored, and not package data).
"""
