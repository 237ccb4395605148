"""The GPU check (``make gpu-check``): speed, float32 agreement with the CPU, autocast against
float32, the out-of-memory fallbacks, ``--gids`` over several GPUs and the demo on a chosen GPU,
with real-size random-weight models (sizes, bars and measurements: ``benchmarks/gpu_check.py``).

The tests run in this order on one set-up (``gpu_setup``): the speed first, on a quiet device.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import clips, gpu_check

pytestmark = pytest.mark.gpu


def test_stages_1_to_3_run_and_their_speed_is_measured(gpu_setup, measurements, compared):
    objects = gpu_check.measure_speed(gpu_setup, measurements)
    passed, detail = compared(
        "stages 1-3 ran",
        (
            objects > 0,
            f"{len(gpu_setup.images)} frames, {len(gpu_setup.sentences)} expressions, "
            f"{objects} SAM 2 objects",
        ),
    )
    assert passed, detail


# -- float32 on the GPU against the CPU (no TF32), on the first --short-frames frames ---------------


def test_stage1_float32_on_the_gpu_matches_the_cpu(gpu_setup, compared):
    import torch

    from stage1_referdino import preprocess
    from stage1_referdino.runner import build_stage1_model

    frames = gpu_setup.images[: gpu_setup.short_frames]
    video = preprocess(frames, short_side=gpu_setup.cfg.stage1.short_side)
    sentence = next(iter(gpu_setup.sentences.values()))
    model = gpu_setup.stage1_model()
    cpu_model = build_stage1_model(gpu_setup.cfg.stage1, "cpu")
    with torch.inference_mode(), gpu_check.strict_float32():
        gpu_out = {k: v.cpu().numpy() for k, v in model.infer(video, sentence).items()}
        cpu_out = {k: v.numpy() for k, v in cpu_model.infer(video, sentence).items()}
    del cpu_model
    passed, detail = compared(
        f"stage 1 float32 GPU vs CPU, max abs diff ({len(frames)} frames)",
        gpu_check.compare_outputs(gpu_out, cpu_out, gpu_check.STAGE1_GPU_CPU_RELATIVE),
    )
    assert passed, detail


def test_stage2_float32_on_the_gpu_matches_the_cpu(gpu_setup, compared):
    import torch

    from benchmarks.bench_stage2_feature_reuse import make_proposals
    from stage2_sam2_refine.refine import Refiner
    from stage2_sam2_refine.tracker import build_tracker

    frames = gpu_setup.frame_paths[: gpu_setup.short_frames]
    masks = gpu_setup.object_masks[: len(frames)]
    proposals = make_proposals(masks, [1, 2], num_queries=4)
    cpu_options = dataclasses.replace(gpu_setup.cfg.stage2, autocast=None)
    cpu_refiner = Refiner(build_tracker(cpu_options, device="cpu"), cpu_options)
    gpu_refiner = gpu_setup.refiner(autocast=None)
    with (
        gpu_check.attribute(gpu_refiner.tracker.predictor, "maskmem_dtype", torch.float32),
        gpu_check.strict_float32(),
    ):
        gpu = dict(gpu_refiner.refine_video(frames, proposals, video_id="short"))
    cpu = dict(cpu_refiner.refine_video(frames, proposals, video_id="short"))
    del cpu_refiner
    passed, detail = compared(
        "stage 2 float32 GPU vs CPU, mask IoU",
        gpu_check.compare_mask_sets(
            {e: r.masks for e, r in gpu.items()},
            {e: r.masks for e, r in cpu.items()},
            gpu_check.STAGE2_GPU_CPU_MIN_IOU,
        ),
    )
    assert passed, detail


# -- float16 and bfloat16 autocast against float32, on the first --autocast-frames frames ----------


@pytest.fixture(scope="module")
def float32_run(gpu_setup):
    """Stages 1-3 in float32 (float32 SAM 2 memories, no TF32): ``(answers, unions, stage 3)``,
    answers and unions as ``gpu_check.union_masks`` gives them."""
    import torch

    model = gpu_setup.stage1_model()
    refiner = gpu_setup.refiner(autocast=None)
    with (
        gpu_check.strict_float32(),
        gpu_check.attribute(model, "autocast_dtype", None),
        gpu_check.attribute(refiner.tracker.predictor, "maskmem_dtype", torch.float32),
    ):
        stage1, stage2, stage3 = gpu_check.run_stages(
            gpu_setup, refiner, num_frames=gpu_setup.autocast_frames
        )
    return (*gpu_check.union_masks(stage1, stage2), stage3)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_autocast_matches_float32(gpu_setup, float32_run, name, compared):
    import torch

    from rvos.options import Autocast

    ref_answers, ref_unions, ref_stage3 = float32_run
    refiner = gpu_setup.refiner(autocast=Autocast(name))
    with gpu_check.attribute(gpu_setup.stage1_model(), "autocast_dtype", getattr(torch, name)):
        stage1, stage2, stage3 = gpu_check.run_stages(
            gpu_setup, refiner, num_frames=gpu_setup.autocast_frames
        )
    answers, unions = gpu_check.union_masks(stage1, stage2)
    results = [
        compared(
            f"{name} vs float32: stage-1 answer masks",
            gpu_check.compare_mask_sets(answers, ref_answers, gpu_check.AUTOCAST_MIN_IOU),
        ),
        compared(
            f"{name} vs float32: SAM 2 masks",
            gpu_check.compare_mask_sets(unions, ref_unions, gpu_check.AUTOCAST_MIN_IOU),
        ),
        compared(
            f"{name} vs float32: fusion decisions",
            gpu_check.compare_decisions(
                gpu_check.decisions(stage3), gpu_check.decisions(ref_stage3)
            ),
        ),
    ]
    assert all(passed for passed, _ in results), [detail for _, detail in results]


# -- out-of-memory fallbacks under a memory cap between the normal and the fallback way's peaks ----


@pytest.fixture(scope="module")
def stage1_worker_run(cuda_setup):
    """The stage-1 worker's normal run (features on the device): ``(record, peak bytes)``."""
    from rvos.options import CacheDevice

    record, _, _, peak = gpu_check.measured(
        cuda_setup.device,
        lambda: gpu_check.run_stage1_worker(cuda_setup, "oom1-normal", CacheDevice.auto),
    )
    return record, peak


def test_stage1_under_a_memory_cap_retries_with_the_same_masks(
    cuda_setup, stage1_worker_run, compared
):
    """The worker's out-of-memory retry (features in host memory) is taken, its warning logged,
    and gives the normal run's masks."""
    import torch

    from rvos.options import CacheDevice

    setup, device = cuda_setup, cuda_setup.device
    total = torch.cuda.get_device_properties(device).total_memory
    normal, peak_normal = stage1_worker_run
    _, _, _, peak_fallback = gpu_check.measured(
        device, lambda: gpu_check.run_stage1_worker(setup, "oom1-fallback", CacheDevice.cpu)
    )
    fraction = gpu_check.cap_fraction(peak_normal, peak_fallback, total)
    what = "stage 1 under a memory cap: retried, same masks"
    if fraction is None:
        compared(what, (False, gpu_check.too_close(peak_normal, peak_fallback)))
        pytest.fail(gpu_check.too_close(peak_normal, peak_fallback))
    # the root logger: the worker's retry and the masks' host fallback both count
    with gpu_check.captured_warnings("") as warnings, gpu_check.memory_cap(fraction, device):
        capped = gpu_check.run_stage1_worker(setup, "oom1-capped", CacheDevice.auto)
    passed, detail = compared(
        what,
        gpu_check.fallback_outcome(
            fraction,
            total,
            (peak_fallback, peak_normal),
            warnings,
            {e: p.masks.decode() for e, p in capped.expressions.items()},
            {e: p.masks.decode() for e, p in normal.expressions.items()},
        ),
    )
    assert passed, detail


def test_stage2_under_a_memory_cap_retries_offloaded_with_the_same_masks(
    cuda_setup, stage1_worker_run, compared
):
    """SAM 2's out-of-memory retry (frames, state and features in host memory) is taken, its
    warning logged, and gives the normal run's masks."""
    import torch

    from rvos.options import CacheDevice

    setup, device = cuda_setup, cuda_setup.device
    total = torch.cuda.get_device_properties(device).total_memory
    proposals = stage1_worker_run[0].expressions
    refiner = setup.refiner()
    offloaded = setup.refiner(
        offload_video_to_cpu=True, offload_state_to_cpu=True, feature_cache_device=CacheDevice.cpu
    )

    def stage2_run(chosen):
        return dict(chosen.refine_video(setup.frame_paths, proposals, video_id="oom"))

    normal, _, _, peak_normal = gpu_check.measured(device, lambda: stage2_run(refiner))
    _, _, _, peak_fallback = gpu_check.measured(device, lambda: stage2_run(offloaded))
    fraction = gpu_check.cap_fraction(peak_normal, peak_fallback, total)
    what = "stage 2 under a memory cap: offloaded retry, same masks"
    if fraction is None:
        compared(what, (False, gpu_check.too_close(peak_normal, peak_fallback)))
        pytest.fail(gpu_check.too_close(peak_normal, peak_fallback))
    with gpu_check.captured_warnings("") as warnings, gpu_check.memory_cap(fraction, device):
        capped = stage2_run(refiner)
    passed, detail = compared(
        what,
        gpu_check.fallback_outcome(
            fraction,
            total,
            (peak_fallback, peak_normal),
            warnings,
            {e: r.masks for e, r in capped.items()},
            {e: r.masks for e, r in normal.items()},
        ),
    )
    assert passed, detail


# -- several GPUs and the demo ---------------------------------------------------------------------


def test_gids_over_all_gpus_give_the_records_of_gids_0(cuda_setup, run_cli, compared):
    import torch

    from rvos import intermediates as im

    setup, count = cuda_setup, torch.cuda.device_count()
    if count < 2:
        pytest.skip(f"{count} GPU on this machine: --gids over several needs two or more")
    height, width = setup.images[0].height, setup.images[0].width
    videos = {}
    for index in range(count):
        frames, _ = clips.synthetic_clip(gpu_check.MULTI_GPU_FRAMES, height, width, seed=index + 1)
        videos[f"video{index}"] = (frames, gpu_check.sentences_for(2))
    root = gpu_check.write_split(setup.work / "multi_split", videos)
    overrides = [
        o
        for o in setup.overrides
        if not o.startswith(("data.root=", "work_dir=", "submission_dir="))
    ]
    masks, multi_object = {}, {}
    for name, gids in (("one", ["0"]), ("all", [str(g) for g in range(count)])):
        work = setup.work / f"multi_{name}"
        proc = run_cli(
            "--gids",
            *gids,
            "--name",
            f"gpu_check_{name}",
            f"data.root={root}",
            f"work_dir={work}",
            f"submission_dir={work / 'submissions'}",
            *overrides,
            check=False,
        )
        assert proc.returncode == 0, f"--gids {' '.join(gids)}: {proc.stderr[-3000:]}"
        records = {v: im.load_stage3(im.stage_path(work, 3, v)) for v in videos}
        fused = [(f"{v}/{e}", f) for v, r in records.items() for e, f in r.expressions.items()]
        masks[name] = {key: f.masks.decode() for key, f in fused}
        multi_object[name] = {key: f.multi_object for key, f in fused}
    same_masks, detail = gpu_check.compare_mask_sets(
        masks["all"], masks["one"], gpu_check.SAME_MASKS_MIN_IOU
    )
    same_decisions, decided = gpu_check.compare_decisions(multi_object["all"], multi_object["one"])
    passed, detail = compared(
        f"--gids 0..{count - 1} vs --gids 0 ({count} videos)",
        (same_masks and same_decisions, f"{detail}; decisions {decided}"),
    )
    assert passed, detail


def test_the_demo_runs_on_the_gpu_it_is_given(cuda_setup, run_cli, compared):
    import torch

    setup, last = cuda_setup, torch.cuda.device_count() - 1
    out = setup.work / "demo"
    proc = run_cli(
        "demo",
        "--video",
        setup.frame_paths[0].parent,
        "--text",
        clips.SENTENCES[0],
        "--text",
        clips.SENTENCES[1],
        "--gid",
        last,
        "--max-frames",
        min(gpu_check.DEMO_FRAMES, len(setup.frame_paths)),
        "--out",
        out,
        *(o for o in setup.overrides if o.startswith(("stage1.", "stage2."))),
        check=False,
    )
    assert proc.returncode == 0, f"demo --gid {last}: {proc.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    written = (out / "overlay.mp4").is_file() and any((out / "masks").rglob("*.png"))
    ran_on = summary.get("device")
    passed, detail = compared(
        f"demo --gid {last}",
        (
            written and ran_on == f"cuda:{last}",
            f"ran on {ran_on}; overlay.mp4 and masks {'written' if written else 'MISSING'}",
        ),
    )
    assert passed, detail
