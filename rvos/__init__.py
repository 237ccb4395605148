"""The shared data layer of the ReferDINO-Plus pipeline: data and formats, no models, no stages.

- :mod:`rvos.splits`: benchmark splits in each registered file layout (MeViS, Ref-YouTube-VOS,
  Ref-DAVIS17), read into the same videos and expressions, and their validation.
- :mod:`rvos.mevis`: MeViS splits (v1 and v2) and their ground truth.
- :mod:`rvos.intermediates`: the versioned per-video records the stages exchange.
- :mod:`rvos.proposals`: stage-1 records from a model's raw outputs or from legacy files, and
  the stage-1 answer rules.
- :mod:`rvos.legacy`: ReferDINO-Plus ``Annotations_intermediate/*.npz`` reader and writer.
- :mod:`rvos.masks`: binary-mask helpers (run-length codec, bounding boxes, logit upsampling).
- :mod:`rvos.archive`: submission archives of PNG masks, one member layout per benchmark.
- :mod:`rvos.davis`: Ref-DAVIS17's indexed masks (DAVIS palette).
- :mod:`rvos.archive_reader`: reading a prediction archive's PNG masks, member by member,
  within the limits of :mod:`rvos.archive_limits` (``evaluation.limits``).
- :mod:`rvos.metrics`: J and F of one frame, as the official MeViS/DAVIS evaluation.
- :mod:`rvos.mevis_metric`, :mod:`rvos.davis_metric`: an archive scored with the official MeViS
  J&F (and MeViS v2's accuracies), or with the DAVIS 2017 unsupervised protocol.
- :mod:`rvos.scores`: what a metric returns: the scores, their JSON and their table.
- :mod:`rvos.evaluation`: the metrics by name, and the evaluator's command line.
- :mod:`rvos.registry`: the named entries a benchmark picks (layouts, answer rules, writers,
  metrics).
- :mod:`rvos.video`: reading clips and writing H.264 videos.
- :mod:`rvos.drawing`: overlays, captions, strips and plots of masks.
- :mod:`rvos.fonts`: text in pictures in any script (per-character font fallback, emoji).
- :mod:`rvos.workers`: sharding videos over GPU workers.
- :mod:`rvos.options`: the vocabulary of the stages' typed options (and their autocast dtypes).
- :mod:`rvos.lazy`: a package's public names imported on first use (the stages' `__init__`).
- :mod:`rvos.io`: atomic writes and safe file names.

It imports no stage package and no application module (``tests/test_layers.py``).
"""
