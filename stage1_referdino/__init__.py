"""Stage 1 of ReferDINO-Plus: ReferDINO proposals (per frame query scores, boxes, mask logits)."""

from rvos.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "stage1_referdino.build": (
            "ReferDINOConfig",
            "build_referdino",
            "load_model_config",
            "load_referdino",
            "load_state_dict_strict",
            "read_checkpoint",
        ),
        "stage1_referdino.model": ("ClipFeatures", "ReferDINO", "VideoFeatures"),
        "stage1_referdino.transforms": ("preprocess",),
    },
)
