"""Data package ``crossmodal.examples``: the example images in ``images/``, also used for int8 calibration.

Read by :mod:`crossmodal.export.resources`; regenerate with ``make examples``.
"""
