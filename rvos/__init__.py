"""Shared infrastructure of the ReferDINO-Plus pipeline.

- :mod:`rvos.mevis`: MeViS-layout splits (expressions, frames, ground truth) and their validation.
- :mod:`rvos.masks`: binary-mask helpers (run-length codec, bounding boxes, logit upsampling).
- :mod:`rvos.intermediates`: the versioned per-video files the stages exchange.
- :mod:`rvos.legacy`: ReferDINO-Plus ``Annotations_intermediate/*.npz`` reader and writer.
- :mod:`rvos.workers`: sharding videos over GPU workers.
- :mod:`rvos.metrics`: the official MeViS J&F metric.
- :mod:`rvos.pipeline`: the three stages end to end.
"""
