"""The ReferDINO-Plus application: configuration, the pipeline over a split, the demo on your own
video, run reports and pictures, and the command line (:mod:`referdino_plus.cli`).

It composes the stage packages (``stage1_referdino``, ``stage2_sam2_refine``, ``stage3_fusion``),
which share the data layer :mod:`rvos` and never import each other.
"""
