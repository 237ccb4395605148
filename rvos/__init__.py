"""The shared data layer of the ReferDINO-Plus pipeline: data and formats, no models, no stages.

- :mod:`rvos.mevis`: MeViS-layout splits (expressions, frames, ground truth) and their validation.
- :mod:`rvos.intermediates`: the versioned per-video records the stages exchange.
- :mod:`rvos.proposals`: stage-1 records from a model's raw outputs or from legacy files.
- :mod:`rvos.legacy`: ReferDINO-Plus ``Annotations_intermediate/*.npz`` reader and writer.
- :mod:`rvos.masks`: binary-mask helpers (run-length codec, bounding boxes, logit upsampling).
- :mod:`rvos.archive`: submission archives of PNG masks.
- :mod:`rvos.metrics`, :mod:`rvos.evaluation`: the official MeViS J&F, on an archive.
- :mod:`rvos.video`: reading clips and writing H.264 videos.
- :mod:`rvos.drawing`: overlays, captions, strips and plots of masks.
- :mod:`rvos.workers`: sharding videos over GPU workers.
- :mod:`rvos.options`: the vocabulary of the stages' typed options.
- :mod:`rvos.io`: atomic writes and safe file names.

It imports no stage package and no application module (``tests/test_layers.py``).
"""
