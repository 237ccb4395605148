"""The benchmarks' and the GPU check's own code: timers, tables, generated models and clips,
the wheelhouse, the check's comparisons and arguments, and the GPU tests (tests/gpu) left out of a
plain run, skipping without a GPU, and run on the CPU with the tiny models."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

from benchmarks import clips, gpu_check, real_size, timing, wheelhouse
from benchmarks.bench_stage2_feature_reuse import make_proposals, parse_objects
from stage2_sam2_refine.prompts import prompt_frames, select_queries

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- timing


def test_timer_charges_each_component_its_own_time() -> None:
    timer = timing.ComponentTimer()
    with timer.measure("outer"):
        time.sleep(0.05)
        with timer.measure("inner"):
            time.sleep(0.1)
    assert timer.seconds["inner"] >= 0.1
    assert 0.05 <= timer.seconds["outer"] < 0.1  # the inner call is not counted twice
    assert timer.calls == {"outer": 1, "inner": 1}
    assert timer.total() == pytest.approx(timer.seconds["outer"] + timer.seconds["inner"])
    timer.reset()
    assert timer.seconds == {} and timer.calls == {}


def test_timer_patches_an_instance_and_restores_it() -> None:
    class Model:
        def forward(self, x: int) -> int:
            return x + 1

    model = Model()
    timer = timing.ComponentTimer()
    with timer.patch(model, {"forward": "model"}):
        assert model.forward(1) == 2
        assert model.forward(2) == 3
    assert timer.calls == {"model": 2}
    assert "forward" not in vars(model)  # the class's method again
    assert model.forward(3) == 4 and timer.calls == {"model": 2}


def test_format_table_aligns_quantities_right() -> None:
    """A Markdown table: every row as wide as the header, cells in their columns, quantities
    right-aligned (the rule marks it with ``:``), text left-aligned."""
    headers = ["component", "time", "note"]
    rows = [["backbone", "12.3 s", "ok"], ["total", "1.5 ms", "-"], ["mask", "", "long note"]]
    lines = timing.format_table(headers, rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1
    cells = [[c[1:-1] for c in line.split("|")[1:-1]] for line in lines]
    assert [c.strip() for c in cells[0]] == headers
    assert [[c.strip() for c in row] for row in cells[2:]] == rows
    rule = lines[1].split("|")[1:-1]
    assert [r.endswith(":") for r in rule] == [False, True, False]
    for component, seconds, note in cells[2:]:
        assert component == component.strip().ljust(len(component))
        assert seconds == seconds.strip().rjust(len(seconds))
        assert note == note.strip().ljust(len(note))
    with pytest.raises(ValueError, match="3 cells"):
        timing.format_table(["a", "b", "c"], [["1", "2"]])


def test_comparison_rows_have_shares_and_a_total() -> None:
    per_expression, shared = timing.ComponentTimer(), timing.ComponentTimer()
    per_expression.seconds = {"enc": 30.0, "track": 10.0}
    shared.seconds = {"enc": 5.0, "track": 15.0}
    rows = timing.comparison_rows(
        [("enc", "encoder"), ("track", "tracking"), ("none", "absent")], per_expression, shared
    )
    assert rows == [
        ["encoder", "30.0 s", "75%", "5.00 s", "25%"],
        ["tracking", "10.0 s", "25%", "15.0 s", "75%"],
        ["total", "40.0 s", "100%", "20.0 s", "100%"],
    ]
    assert timing.format_seconds(0.0123) == "12 ms"


# ----------------------------------------------------------------------------- real-size models


def test_generated_vocabulary_is_bert_base_sized_and_tokenizes_without_unknowns(tmp_path) -> None:
    from transformers import AutoTokenizer, BertConfig

    vocab = real_size.generated_vocabulary()
    assert len(vocab) == real_size.BERT_VOCAB_SIZE == len(set(vocab))
    for index, token in real_size.BERT_SPECIAL_TOKENS.items():
        assert vocab[index] == token
    assert {".", "?"} <= set(vocab) and vocab[1] == "[unused0]" and vocab[104] == "."
    assert vocab == real_size.generated_vocabulary()  # deterministic

    folder = real_size.write_text_encoder(tmp_path / "bert")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = BertConfig.from_pretrained(folder, local_files_only=True)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (30522, 768, 12)
    tokens = tokenizer.tokenize("The boy that stopped and turned around. Then JUMPING?")
    assert "[UNK]" not in tokens and tokens[-1] == "?"
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"]) == [101, 102]


def test_random_state_dict_follows_the_manifest() -> None:
    reference = {
        "layer.weight": torch.zeros(8, 4),
        "norm.weight": torch.zeros(8),
        "norm.bias": torch.zeros(8),
        "attn.relative_position_index": torch.arange(6).reshape(2, 3),
    }
    manifest = {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in reference.items()
    }
    state_dict = real_size.referdino_state_dict(reference, manifest, seed=1)
    assert {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state_dict.items()
    } == manifest
    assert torch.equal(state_dict["attn.relative_position_index"], torch.arange(6).reshape(2, 3))
    assert (state_dict["norm.weight"] - 1).abs().max() < 1  # norm scales near 1
    assert state_dict["layer.weight"].std() == pytest.approx(0.5, rel=0.5)  # 1 / sqrt(fan-in 4)
    again = real_size.referdino_state_dict(reference, manifest, seed=1)
    assert all(torch.equal(state_dict[k], again[k]) for k in state_dict)

    manifest["layer.weight"] = [[8, 5], "float32"]
    with pytest.raises(ValueError, match="layer.weight"):
        real_size.referdino_state_dict(reference, manifest)


def test_the_real_architecture_matches_the_released_manifest(fixtures_dir) -> None:
    manifest = real_size.read_manifest(
        "mevis_swinb", fixtures_dir / "referdino_checkpoint_manifests.json"
    )
    assert manifest is not None and len(manifest) == 1940
    assert real_size.read_manifest("mevis_swinb", fixtures_dir / "absent.json") is None


def test_synthetic_clip() -> None:
    frames, masks = clips.synthetic_clip(4, 36, 64, num_objects=2)
    assert len(frames) == 4 and frames[0].size == (64, 36) and frames[0].mode == "RGB"
    assert masks.shape == (4, 2, 36, 64) and masks.dtype == bool
    assert masks.any(axis=(2, 3)).all()  # every object visible on every frame


@pytest.mark.slow
def test_random_real_size_models_load_strictly(tmp_path) -> None:
    """The benchmarks' ReferDINO mevis_swinb and SAM 2.1 load through the pipeline's strict
    loaders."""
    from stage1_referdino import load_referdino
    from stage2_sam2_refine.build import build_sam2_predictor

    files = real_size.write_referdino(tmp_path)
    model = load_referdino(files.model, files.checkpoint, text_encoder=files.text_encoder)
    assert sum(p.numel() for p in model.parameters()) > 200_000_000
    assert any("stage1.text_encoder=" in o for o in files.overrides())
    del model
    checkpoint = real_size.write_sam2(tmp_path, "sam2.1_hiera_t")
    assert checkpoint.name == "sam2.1_hiera_tiny.pt"
    predictor = build_sam2_predictor("sam2.1_hiera_t", checkpoint)
    assert predictor.image_size == 1024
    with pytest.raises(ValueError, match="unknown SAM 2.1 model"):
        real_size.write_sam2(tmp_path, "sam2_hiera_x")


# ----------------------------------------------------------------------------- benchmark helpers


def test_benchmark_arguments() -> None:
    assert clips.parse_size("1280x720") == (720, 1280)
    assert parse_objects("1,2,0") == [1, 2, 0]
    for bad in ("1280", "x720", "0x5"):
        with pytest.raises(Exception, match="WIDTHxHEIGHT|positive"):
            clips.parse_size(bad)
    with pytest.raises(Exception, match="expected"):
        parse_objects("1,a")


def test_stage2_benchmark_proposals_keep_the_asked_objects() -> None:
    _, masks = clips.synthetic_clip(5, 20, 30, num_objects=3)
    proposals = make_proposals(masks, [1, 2, 0], num_queries=4)
    for (exp_id, p), objects in zip(proposals.items(), [1, 2, 0], strict=True):
        queries = select_queries(p.scores, 0.275)
        assert queries.tolist() == list(range(objects))
        if objects:
            assert prompt_frames(p.scores, queries).tolist() == [
                (int(exp_id) + q) % 5 for q in range(objects)
            ]
            assert p.masks[:, 0].any()
    with pytest.raises(ValueError, match="queries"):
        make_proposals(masks, [5], num_queries=4)


# ----------------------------------------------------------------------------- wheelhouse


def test_wheelhouse_commands_build_pure_wheels_and_download_binaries(tmp_path) -> None:
    pins = wheelhouse.read_pins()
    commands = wheelhouse.download_commands("3.12", tmp_path, pins, python="py")
    built = {cmd[-1]: (cmd, env) for cmd, env in commands if "wheel" in cmd}
    sam2_command, sam2_env = built["sam2==1.1.0"]
    assert "--no-build-isolation" in sam2_command and sam2_env == {"SAM2_BUILD_CUDA": "0"}
    assert {c.split("==")[0] for c in built} == {
        w.distribution for w in wheelhouse.WHEELS if w.build
    }
    download, env = commands[-1]
    assert download[:3] == ["py", "-m", "pip"] and "download" in download and env == {}
    assert download[download.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in download and "--no-deps" in download
    assert f"av=={pins['av']}" in download and "manylinux_2_17_x86_64" in download
    assert not any(arg.startswith(("torch", "numpy")) for cmd, _ in commands for arg in cmd)


def test_wheelhouse_and_a_pytorch_machine_cover_every_runtime_requirement() -> None:
    requirements = wheelhouse.PROJECT_ROOT / "requirements.txt"
    names = set()
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(wheelhouse.normalize(re.split(r"[<>=!~ ]", line, maxsplit=1)[0]))
    covered = {wheelhouse.normalize(w.distribution) for w in wheelhouse.WHEELS}
    covered |= {wheelhouse.normalize(name) for name in wheelhouse.MACHINE_HAS}
    left_out = {wheelhouse.normalize(name) for name in wheelhouse.LEFT_OUT}
    assert names and names <= covered | left_out, sorted(names - covered - left_out)
    assert not covered & left_out


def test_wheelhouse_carries_pytest_and_what_it_needs() -> None:
    """make gpu-check runs pytest on the node: pytest's requirements on Linux, Python 3.11 and
    newer, are wheels of the wheelhouse or packages a PyTorch machine has."""
    covered = {wheelhouse.normalize(w.distribution) for w in wheelhouse.WHEELS}
    covered |= {wheelhouse.normalize(name) for name in wheelhouse.MACHINE_HAS}
    assert "pytest" in covered
    environment = {"python_version": "3.11", "sys_platform": "linux", "extra": ""}
    needs = {
        wheelhouse.normalize(requirement.name)
        for requirement in map(Requirement, importlib.metadata.requires("pytest") or [])
        if requirement.marker is None or requirement.marker.evaluate(environment)
    }
    assert needs and needs <= covered, sorted(needs - covered)


def test_wheelhouse_runs_a_command_with_its_packages(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(wheelhouse, "WHEELS", ())  # nothing missing: nothing to install
    code = "import sys; sys.exit(len(sys.argv))"
    assert wheelhouse.run(tmp_path / "absent", ["-c", code, "a", "b"]) == 3


def test_wheelhouse_pins_and_wheel_names(tmp_path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# comment\nhydra-core==1.3.8\nOmegaConf==2.3.1  # x\ntorch>=2\n")
    assert wheelhouse.read_pins(constraints) == {"hydra_core": "1.3.8", "omegaconf": "2.3.1"}
    with pytest.raises(KeyError, match="pins no version"):
        wheelhouse.pinned(wheelhouse.Wheel("nothing", "nothing", False), {})
    for name in (
        "hydra_core-1.3.8-py3-none-any.whl",
        "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl",
    ):
        (tmp_path / name).write_bytes(b"x")
    assert wheelhouse.wheel_versions(tmp_path) == {"hydra_core": "1.3.8", "av": "18.1.0"}
    assert wheelhouse.site_folder(tmp_path, (3, 12)) == tmp_path / "site-py3.12"


def test_wheelhouse_installs_only_what_is_missing_without_dependencies(
    tmp_path, monkeypatch
) -> None:
    installed = {"hydra-core": "1.3.8", "omegaconf": "2.2.0"}
    monkeypatch.setattr(wheelhouse, "installed_version", installed.get)
    wheels = [
        wheelhouse.Wheel("hydra-core", "hydra", False),  # same version: kept
        wheelhouse.Wheel("omegaconf", "omegaconf", False),  # another version: replaced
        wheelhouse.Wheel("av", "av", False),  # missing
    ]
    available = {"hydra_core": "1.3.8", "omegaconf": "2.3.1", "av": "18.1.0"}
    needed = wheelhouse.needed(wheels, available)
    assert [w.distribution for w in needed] == ["omegaconf", "av"]
    command = wheelhouse.install_command(tmp_path, tmp_path / "site", needed, python="py")
    assert command[-2:] == ["omegaconf", "av"]
    for flag in ("--no-index", "--no-deps", "--target"):
        assert flag in command
    assert command[command.index("--find-links") + 1] == str(tmp_path)


def test_wheelhouse_missing_packages_and_no_wheels_say_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(wheelhouse, "WHEELS", (wheelhouse.Wheel("not-installed", "nope", False),))
    with pytest.raises(SystemExit, match="make wheelhouse PYTHON_VERSION="):
        wheelhouse.install(tmp_path / "absent")
    monkeypatch.setattr(wheelhouse, "WHEELS", ())
    assert wheelhouse.install(tmp_path / "absent") is None  # nothing missing: nothing to do


# ----------------------------------------------------------------------------- GPU check


def run_gpu_tests(*args: str, env: dict[str, str], junit: Path | None = None):
    """``python -m pytest *args tests/gpu`` in a fresh process (the GPU tests' own session, with
    their summary, and no plug-ins: as make gpu-check runs them), with ``env`` added to this
    one's; ``junit``: ``{test name: outcome}``, the outcome ``"passed"``, ``"failure"``,
    ``"error"`` or ``"skipped: <reason>"``."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, "tests/gpu"]
    if junit is not None:
        command += [f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    proc = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
    )
    outcomes = {}
    if junit is not None and junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag == "skipped":
                    outcome = f"skipped: {child.get('message')}"
                elif child.tag in ("failure", "error"):
                    outcome = child.tag
            outcomes[case.get("name")] = outcome
    return proc, outcomes


GPU_TESTS = 9  # tests/gpu/test_gpu_check.py's tests, parametrised ones counted once each


def test_gpu_tests_run_only_when_the_marker_expression_names_them() -> None:
    """A plain run (``make test``) and ``-m "not slow"`` leave them out: none is reported as
    skipped or passed there; ``-m gpu`` selects them."""
    for args in ([], ["-m", "not slow"], ["-m", "not gpu"]):
        proc, _ = run_gpu_tests("--collect-only", "-q", *args, env={})
        assert proc.returncode == 5, proc.stdout  # 5: no tests collected
        assert f"no tests collected ({GPU_TESTS} deselected)" in proc.stdout, args
    proc, _ = run_gpu_tests("--collect-only", "-q", "-m", "gpu or slow", env={})
    assert proc.returncode == 0 and f"{GPU_TESTS} tests collected" in proc.stdout, proc.stdout


def test_gpu_tests_skip_saying_why_without_a_gpu(tmp_path) -> None:
    """Runs on any machine: the tests' process sees no GPU (``CUDA_VISIBLE_DEVICES`` empty)."""
    proc, outcomes = run_gpu_tests(
        "-m", "gpu", env={"CUDA_VISIBLE_DEVICES": ""}, junit=tmp_path / "junit.xml"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert len(outcomes) == GPU_TESTS, outcomes
    for name, outcome in outcomes.items():
        assert outcome.startswith("skipped: no CUDA GPU visible"), (name, outcome)
    assert "the GPU check needs one" in proc.stdout and "GPU check ==" not in proc.stdout


def test_gpu_check_arguments() -> None:
    args = gpu_check.parse_args([])
    assert (args.frames, args.expressions, args.frame_size) == (60, 8, (720, 1280))
    assert args.sam2_model == "sam2.1_hiera_l" and not args.cpu and args.work_dir is None
    args = gpu_check.args_from_environment(
        {"GPU_CHECK_ARGS": "--frame-size 640x360 --cpu --work-dir 'a b'"}
    )
    assert args.frame_size == (360, 640) and args.cpu and args.work_dir == Path("a b")
    assert gpu_check.args_from_environment({}).frames == gpu_check.NUM_FRAMES
    for bad in (
        ["--frames", "3", "--short-frames", "4"],
        ["--frames", "0"],
        ["--skip", "demo"],
        ["--sam2-model", "sam2.1_hiera_x"],
        ["--expressions", "100"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.parse_args(bad)
        assert exit_info.value.code == 2, bad


def test_gpu_check_comparisons() -> None:
    assert gpu_check.relative_max_abs_diff([1.0, 50.0], [1.0, 50.5]) == pytest.approx(
        (0.5, 0.5 / 50.5)
    )
    assert gpu_check.relative_max_abs_diff([0.1], [0.2]) == pytest.approx((0.1, 0.1))  # scale >= 1
    with pytest.raises(ValueError, match="shapes"):
        gpu_check.relative_max_abs_diff(np.zeros(2), np.zeros(3))

    reference = {"pred_logits": np.full((2, 3), 40.0), "pred_boxes": np.full((2, 3, 4), 0.5)}
    close = {"pred_logits": reference["pred_logits"] + 0.02, "pred_boxes": reference["pred_boxes"]}
    passed, detail = gpu_check.compare_outputs(close, reference, 1e-3)
    assert passed and "pred_logits 2.00e-02" in detail
    far = {**close, "pred_boxes": reference["pred_boxes"] + 0.01}
    assert not gpu_check.compare_outputs(far, reference, 1e-3)[0]

    a = np.zeros((2, 4, 4), dtype=bool)
    a[0, :2] = True
    b = a.copy()
    b[0, 0, 0] = False
    np.testing.assert_allclose(gpu_check.mask_ious(a, b), [7 / 8, 1.0])  # both empty: 1
    passed, detail = gpu_check.compare_mask_sets({"0": b}, {"0": a}, 0.99)
    assert not passed and "mean IoU 0.9375" in detail
    assert gpu_check.compare_mask_sets({"0": a}, {"0": a}, 0.999)[0]
    assert not gpu_check.compare_mask_sets({"1": a}, {"0": a}, 0.5)[0]

    passed, detail = gpu_check.compare_decisions({"0": True, "1": False}, {"0": True, "1": True})
    assert not passed and "differ: ['1']" in detail and "1/2 equal" in detail
    assert gpu_check.compare_decisions({"0": True}, {"0": True}) == (
        True,
        "1/1 equal (1 multi-object)",
    )


def test_gpu_check_memory_cap_lies_between_the_peaks() -> None:
    gib = 2**30
    assert gpu_check.cap_fraction(10 * gib, 8 * gib, 100 * gib) == pytest.approx(0.09)
    assert gpu_check.cap_fraction(10 * gib, 10 * gib - 2**20, 100 * gib) is None
    assert gpu_check.cap_fraction(8 * gib, 10 * gib, 100 * gib) is None


def test_gpu_check_judges_a_capped_run() -> None:
    gib = 2**30
    masks = {"0": np.ones((2, 4, 4), dtype=bool)}
    warning = "video v: CUDA out of memory; retrying with the backbone features in host memory"
    passed, detail = gpu_check.fallback_outcome(
        0.1, 80 * gib, (6 * gib, 10 * gib), [warning], masks, masks
    )
    assert passed and "cap 8.00 GiB between peaks 6.00 GiB and 10.00 GiB" in detail
    assert "fallback taken (video v: CUDA out of memory" in detail
    passed, detail = gpu_check.fallback_outcome(
        0.1, 80 * gib, (6 * gib, 10 * gib), [], masks, masks
    )
    assert not passed and "fallback NOT taken" in detail
    other = {"0": np.zeros((2, 4, 4), dtype=bool)}
    assert not gpu_check.fallback_outcome(0.1, gib, (0, 1), [warning], other, masks)[0]


def test_gpu_check_split_and_sentences(tmp_path) -> None:
    from rvos.mevis import MevisSplit

    frames, _ = clips.synthetic_clip(3, 16, 24)
    sentences = gpu_check.sentences_for(10)
    assert len(set(sentences.values())) == 10
    root = gpu_check.write_split(tmp_path, {"clip": (frames, sentences)})
    split = MevisSplit(root)
    assert list(split.videos["clip"].frame_names) == ["00000", "00001", "00002"]
    assert [e.text for e in split.videos["clip"].expressions.values()] == list(sentences.values())


def test_gpu_check_summary_shows_the_figures_and_every_comparison() -> None:
    measurements = gpu_check.Measurements(machine="1 GPU(s): H", clip="clip720p: 60 frames")
    measurements.compared("stage 1 float32 GPU vs CPU", True, "pred_logits 1e-05")
    measurements.compared("stage 2 under a memory cap", False, "fallback NOT taken")
    measurements.speed.append(["1 ReferDINO (float32)", "2.00 s", "30.0", "240.0", "5.10 GiB"])
    text = gpu_check.render(measurements)
    assert text.startswith("1 GPU(s): H\n\nclip720p: 60 frames")
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")) for line in text.splitlines()
    }
    assert ("1 ReferDINO (float32)", "2.00 s", "30.0", "240.0", "5.10 GiB") in rows
    assert ("stage 2 under a memory cap", "FAILED", "fallback NOT taken") in rows
    assert ("stage 1 float32 GPU vs CPU", "ok", "pred_logits 1e-05") in rows
    assert "time per component" not in text  # no rows, no table
    assert gpu_check.render(gpu_check.Measurements()) == ""


@pytest.mark.slow
def test_gpu_tests_run_on_the_cpu_with_the_tiny_models(tmp_path) -> None:
    """The GPU tests' own code, end to end, with the fixture models on the CPU (``--cpu``): the
    comparisons hold trivially there (the "GPU" is the CPU); the CUDA-only tests skip, saying
    so. One precision of the autocast comparison is enough here (the other runs the same code)."""
    sizes = "--frames 3 --expressions 2 --frame-size 64x48 --short-frames 2 --autocast-frames 2"
    proc, outcomes = run_gpu_tests(
        "-m",
        "gpu",
        "-k",
        "not bfloat16",
        env={"GPU_CHECK_ARGS": f"--cpu {sizes} --work-dir {tmp_path / 'work'}"},
        junit=tmp_path / "junit.xml",
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    needs_cuda = "skipped: needs CUDA (this run is on the CPU: GPU_CHECK_ARGS=--cpu)"
    assert outcomes == {
        "test_stages_1_to_3_run_and_their_speed_is_measured": "passed",
        "test_stage1_float32_on_the_gpu_matches_the_cpu": "passed",
        "test_stage2_float32_on_the_gpu_matches_the_cpu": "passed",
        "test_autocast_matches_float32[float16]": "passed",
        "test_stage1_under_a_memory_cap_retries_with_the_same_masks": needs_cuda,
        "test_stage2_under_a_memory_cap_retries_offloaded_with_the_same_masks": needs_cuda,
        "test_gids_over_all_gpus_give_the_records_of_gids_0": needs_cuda,
        "test_the_demo_runs_on_the_gpu_it_is_given": needs_cuda,
    }, proc.stdout[-5000:]
    summary = proc.stdout[proc.stdout.index("GPU check ==") :]
    for row in (
        "| 1 ReferDINO (float32) ",
        "| 2 SAM 2 (4 objects, float32) ",
        "| 3 fusion (CPU) ",
        "| preprocessing and backbone ",
        "| per-object tracking ",
        "| device way, 80 frames of 64x48, 15 queries ",
        "| stages 1-3 ran ",
        "| float16 vs float32: fusion decisions ",
    ):
        assert row in summary, row
    assert (tmp_path / "work" / "split" / "meta_expressions.json").is_file()  # --work-dir kept


@pytest.mark.slow
def test_the_memory_check_runs_the_stage1_worker_both_ways(tmp_path) -> None:
    """The worker run the memory test caps, on the CPU: features kept on the device or in host
    memory give the same records."""
    from rvos.options import CacheDevice

    sizes = "--frames 3 --expressions 2 --frame-size 64x48 --short-frames 2 --autocast-frames 2"
    args = gpu_check.parse_args(["--cpu", *sizes.split()])
    setup = gpu_check.prepare(args, tmp_path)
    assert setup.device == "cpu" and not setup.on_gpu
    auto = gpu_check.run_stage1_worker(setup, "auto", CacheDevice.auto)
    host = gpu_check.run_stage1_worker(setup, "host", CacheDevice.cpu)
    assert list(auto.expressions) == list(setup.sentences)
    for exp_id, proposals in auto.expressions.items():
        np.testing.assert_array_equal(proposals.masks.counts, host.expressions[exp_id].masks.counts)


@pytest.mark.slow
def test_stage1_benchmark_runs_both_ways_identically(caplog) -> None:
    from benchmarks import bench_stage1_backbone_reuse as bench

    caplog.set_level(logging.INFO, logger="bench_stage1")
    bench.main(
        ["--model", "tiny", "--frames", "2", "--expressions", "2", "--frame-size", "128x72"]
        + ["--short-side", "64", "--post-frames", "3", "--post-queries", "4"]
    )
    out = caplog.text
    assert "outputs identical: yes" in out
    for row in (
        "| backbone (Swin",
        "| text encoder, transformer and heads",
        "| device way",
    ):
        assert row in out


@pytest.mark.slow
def test_stage2_benchmark_runs_both_ways_identically(caplog) -> None:
    from benchmarks import bench_stage2_feature_reuse as bench

    caplog.set_level(logging.INFO, logger="bench_stage2")
    bench.main(["--model", "tiny", "--frames", "3", "--frame-size", "96x64", "--objects", "1,2"])
    out = caplog.text
    assert "masks identical: yes" in out and "3 objects" in out
    assert "| image encoder" in out and "| per-object tracking" in out
