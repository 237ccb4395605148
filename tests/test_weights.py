"""Weights by Hugging Face Hub reference (``rvos.weights``, ``download_ckpts.sh``), against a local
stand-in for the hub (``tests/hub_stand_in.py``): nothing here reaches the internet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_stand_in import StandInHub, StandInRepo, use_hf_home

from rvos import weights
from rvos.weights import ChecksumError, HubReference, WeightsError, parse_reference, resolve_weights

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_stand_in"


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """A 2 MB weight file (LFS on the hub) and a config (a plain file)."""
    folder = tmp_path_factory.mktemp("repo_files")
    rng = np.random.default_rng(0)
    (folder / "model.pt").write_bytes(rng.integers(0, 256, 2_000_000, dtype=np.uint8).tobytes())
    (folder / "config.json").write_text('{"model_type": "bert"}\n')
    return {"model.pt": folder / "model.pt", "config.json": folder / "config.json"}


def isolate_hub_settings(monkeypatch, home: Path, endpoint: str) -> None:
    """``HF_HOME``/``HF_ENDPOINT`` for this process (huggingface_hub reads them at import: its
    constants are set too) and for subprocesses; no token, online."""
    import huggingface_hub.constants as constants

    use_hf_home(monkeypatch, home)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def go_offline(monkeypatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def hub(small_files, tmp_path, monkeypatch):
    """The stand-in serving ``tiny/model`` (model.pt, config.json) and the gated ``tiny/gated``;
    ``HF_HOME`` in ``tmp_path``, which is also the working directory (no ``checkpoints/``)."""
    server = StandInHub(
        {
            "tiny/model": StandInRepo(small_files),
            "tiny/gated": StandInRepo({"model.pt": small_files["model.pt"]}, gated=True),
        },
        token=TOKEN,
    ).start()
    isolate_hub_settings(monkeypatch, tmp_path / "hf", server.endpoint)
    monkeypatch.chdir(tmp_path)
    yield server
    server.stop()


def storage_gets(server: StandInHub) -> int:
    return sum(1 for method, path in server.requests if method == "GET" and len(path) == 65)


# ----------------------------------------------------------------------------- references


def test_references_parse_as_huggingface_hubs_file_system_writes_them():
    assert parse_reference("hf://liangtm/referdino/mevis_swinb.pth") == HubReference(
        "liangtm/referdino", None, "mevis_swinb.pth"
    )
    folder = parse_reference("hf://google-bert/bert-base-uncased@main/")
    assert (folder.repo_id, folder.revision, folder.is_folder) == (
        "google-bert/bert-base-uncased",
        "main",
        True,
    )
    assert folder.released_name == "bert-base-uncased"
    assert str(folder) == "hf://google-bert/bert-base-uncased@main/"
    assert parse_reference("hf://o/r@refs%2Fpr%2F1/a/b.pt").revision == "refs/pr/1"
    assert parse_reference("hf://o/r").is_folder
    for bad in ("hf://only-owner", "hf://datasets/o/r/x", "hf://o/r/../x.pt", "hf://o/@v/x"):
        with pytest.raises(WeightsError, match="^hf://"):
            parse_reference(bad)
    assert resolve_weights("some/local.pt") == Path("some/local.pt")  # a path stays a path


# ----------------------------------------------------------------------------- the cache


def test_first_download_then_offline_from_the_cache(hub, small_files, tmp_path, monkeypatch):
    path = resolve_weights("hf://tiny/model/model.pt")
    assert path.read_bytes() == small_files["model.pt"].read_bytes()
    assert path.is_relative_to(tmp_path / "hf" / "hub")  # huggingface_hub's cache, in HF_HOME
    assert storage_gets(hub) == 1
    folder = resolve_weights("hf://tiny/model/", folder_files=["config.json"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.pt"]
    # Served from the cache with the stand-in stopped: nothing is hashed again (remembered).
    hub.stop()
    go_offline(monkeypatch)
    hashed = []
    monkeypatch.setattr(weights, "file_digest", lambda p, git: hashed.append(p))
    count = len(hub.requests)
    assert resolve_weights("hf://tiny/model/model.pt") == path
    assert resolve_weights("hf://tiny/model/", folder_files=["config.json"]) == folder
    assert len(hub.requests) == count and hashed == []


def test_a_copy_in_checkpoints_is_used_first(hub, tmp_path, monkeypatch):
    copy = tmp_path / "checkpoints" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(b"made by download_ckpts.sh before")
    go_offline(monkeypatch)
    assert resolve_weights("hf://tiny/model/model.pt") == Path("checkpoints/model.pt")
    # A folder (the repository's name) is used when it has the files the loader needs.
    (tmp_path / "checkpoints" / "model").mkdir()
    (tmp_path / "checkpoints" / "model" / "config.json").write_text("{}")
    assert resolve_weights("hf://tiny/model/", folder_files=["config.json"]) == Path(
        "checkpoints/model"
    )
    assert hub.requests == []
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        resolve_weights("hf://tiny/model/", folder_files=["config.json", "model.pt"])


def test_nothing_cached_while_offline_or_unreachable_is_one_line(hub, monkeypatch):
    hub.stop()
    with pytest.raises(WeightsError) as unreachable:
        resolve_weights("hf://tiny/model/model.pt")
    go_offline(monkeypatch)
    with pytest.raises(WeightsError) as offline:
        resolve_weights("hf://tiny/model/model.pt")
    for message, why in ((unreachable, "cannot be reached"), (offline, "HF_HUB_OFFLINE=1")):
        text = str(message.value)
        assert text.startswith("hf://tiny/model/model.pt: not in the Hugging Face cache")
        assert why in text and "\n" not in text
        assert "run `bash download_ckpts.sh hf://tiny/model/model.pt` where the hub" in text


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest.mark.parametrize("name", ["model.pt", "config.json"], ids=["lfs", "plain"])
def test_a_damaged_cached_file_is_found(hub, monkeypatch, name, offline):
    path = resolve_weights(f"hf://tiny/model/{name}")
    blob = path.resolve()
    content = bytearray(blob.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, one byte changed
    blob.chmod(0o644)
    blob.write_bytes(bytes(content))
    if offline:  # the cache's own record (the blob's name is the hub's ETag) still tells
        hub.stop()
        go_offline(monkeypatch)
    with pytest.raises(ChecksumError) as caught:
        resolve_weights(f"hf://tiny/model/{name}")
    text = str(caught.value)
    kind = "SHA-256" if name == "model.pt" else "git blob id"
    assert f"the cached file {blob} does not match the hub's {kind}" in text
    assert f"delete it and run `bash download_ckpts.sh hf://tiny/model/{name}`" in text
    assert "\n" not in text and caught.value.blob == blob


def test_a_file_that_changed_size_is_found(hub):
    path = resolve_weights("hf://tiny/model/model.pt")
    path.resolve().chmod(0o644)
    with open(path.resolve(), "ab") as handle:
        handle.write(b"more")
    with pytest.raises(ChecksumError, match="has 2000004 bytes, the hub's has 2000000"):
        resolve_weights("hf://tiny/model/model.pt")


def test_a_gated_repository_needs_access_and_the_token(hub, small_files, monkeypatch):
    with pytest.raises(WeightsError) as caught:
        resolve_weights("hf://tiny/gated/model.pt")
    assert str(caught.value) == (
        "hf://tiny/gated/model.pt: tiny/gated is a gated repository this account cannot read; "
        "request access on https://huggingface.co/tiny/gated and log in with `hf auth login` "
        "(or set HF_TOKEN)"
    )
    assert ("GET", "/api/models/tiny/gated/revision/main") in hub.requests
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the user's token opens it
    path = resolve_weights("hf://tiny/gated/model.pt")
    assert path.read_bytes() == small_files["model.pt"].read_bytes()


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("hf://tiny/nothing/model.pt", "no repository tiny/nothing on http://127.0.0.1:"),
        ("hf://tiny/model/absent.pt", "no file absent.pt in tiny/model at the default branch"),
        ("hf://tiny/model@v9/model.pt", "no revision v9 in tiny/model"),
    ],
    ids=["repository", "file", "revision"],
)
def test_unknown_repository_file_or_revision(hub, reference, message):
    with pytest.raises(WeightsError) as caught:
        resolve_weights(reference)
    assert str(caught.value).startswith(f"{reference}: {message}")
    assert "\n" not in str(caught.value)


def test_an_interrupted_download_resumes(hub, small_files):
    hub.drop_once.add("model.pt")  # the storage closes the connection halfway, once
    path = resolve_weights("hf://tiny/model/model.pt")
    assert storage_gets(hub) == 2  # the first GET cut, the second from where it stopped
    assert path.read_bytes() == small_files["model.pt"].read_bytes()
    assert weights.marker_matches(path.resolve(), weights.cached_expectation(path.resolve(), None))


# ----------------------------------------------------------------------------- download_ckpts.sh


def test_download_script_reports_each_file_and_fails_on_any(hub, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    command = ["bash", str(PROJECT_ROOT / "download_ckpts.sh")]
    targets = ["hf://tiny/model/model.pt", "hf://tiny/gated/model.pt", "hf://tiny/model/"]
    proc = subprocess.run(
        [*command, *targets], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "ok      model.pt  " in proc.stdout and "ok      model  " in proc.stdout
    assert "2 ok, 1 failed" in proc.stdout
    assert "FAILED  model.pt: hf://tiny/gated/model.pt: tiny/gated is a gated" in proc.stderr
    # A damaged cached file is fetched again (and then matches); an unknown name exits 2.
    blob = resolve_weights("hf://tiny/model/model.pt").resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"x" * blob.stat().st_size)
    proc = subprocess.run(
        [*command, "hf://tiny/model/model.pt"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "does not match the hub's SHA-256" in proc.stderr and "fetching it again" in proc.stderr
    assert resolve_weights("hf://tiny/model/model.pt").read_bytes()[:4] != b"xxxx"
    proc = subprocess.run([*command, "nothing.pth"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "nothing.pth: not a group (referdino, sam2, bert, sam3, all)" in proc.stderr


# ----------------------------------------------------------------------------- the applications


@pytest.fixture
def tiny_hub(fixtures_dir, tmp_path, monkeypatch):
    """The stand-in serving the tiny fixture models (ReferDINO, its BERT folder, SAM 2.1) and a
    gated copy of the SAM 2.1 weights; settings as :func:`hub`."""
    stage1, sam2 = fixtures_dir / "referdino_tiny", fixtures_dir / "sam2_tiny"
    server = StandInHub(
        {
            "tiny/referdino": StandInRepo(
                {"referdino_checkpoint.pth": stage1 / "referdino_checkpoint.pth"}
            ),
            "tiny/bert": StandInRepo({p.name: p for p in (stage1 / "text_encoder").iterdir()}),
            "tiny/sam2": StandInRepo({"weights_propagating.pt": sam2 / "weights_propagating.pt"}),
            "tiny/gated": StandInRepo(
                {"weights_propagating.pt": sam2 / "weights_propagating.pt"}, gated=True
            ),
        },
        token=TOKEN,
    ).start()
    isolate_hub_settings(monkeypatch, tmp_path / "hf", server.endpoint)
    monkeypatch.chdir(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def hub_overrides(fixtures_dir) -> list[str]:
    """The tiny models, every weight by hub reference."""
    stage1, sam2 = fixtures_dir / "referdino_tiny", fixtures_dir / "sam2_tiny"
    return [
        f"stage1.model={stage1 / 'model.yaml'}",
        "stage1.checkpoint=hf://tiny/referdino/referdino_checkpoint.pth",
        "stage1.text_encoder=hf://tiny/bert/",
        "stage1.short_side=64",
        "stage1.top_k=2",
        f"stage2.model={sam2 / 'tiny_sam2.1.yaml'}",
        "stage2.checkpoint=hf://tiny/sam2/weights_propagating.pt",
    ]


def run_pipeline_demo_and_app(
    run_command, name: str, tmp_path: Path, fixtures_dir: Path, split: Path, overrides: list[str]
) -> tuple[bytes, bytes, bytes]:
    """A pipeline run, a demo and an app job on the tiny models: their fused masks."""
    from referdino_plus.app import CONFIGURED_SAM2, App, JobRequest
    from referdino_plus.config import load_config

    out = tmp_path / name
    run_command(
        "--cpu", "--name", name, f"data.root={split}", f"work_dir={out / 'work'}",
        f"submission_dir={out / 'submissions'}", "archive.jobs=1", *overrides,
    )  # fmt: skip
    frames = fixtures_dir / "referdino_tiny" / "frames"
    demo = out / "demo"
    run_command(
        "demo", "--cpu", "--video", frames, "--max-frames", "2", "--text", "the person",
        "--out", demo, *overrides,
    )  # fmt: skip
    app = App(load_config([f"app.results_dir={out / 'app'}", *overrides]), "cpu")
    app.load_models()
    assert app.startup_problem is None
    request = JobRequest(frames, ["the person"], 1, 2, CONFIGURED_SAM2, "mask", "sam2")
    job = app.run(request)
    return (
        (out / "submissions" / "fused.zip").read_bytes(),
        (demo / "summary.json").read_bytes(),
        job.masks_zip.read_bytes(),
    )


@pytest.mark.slow
def test_pipeline_demo_and_app_run_from_hub_references_then_offline(
    tiny_hub, hub_overrides, fixtures_dir, make_split, tmp_path, monkeypatch, run_cli
):
    split = make_split(
        tmp_path / "split",
        {"vid": {"frames": ["00000", "00001"], "expressions": {"0": "the dog"}}},
        size=(48, 64),
    )
    online = run_pipeline_demo_and_app(
        run_cli, "online", tmp_path, fixtures_dir, split, hub_overrides
    )
    assert storage_gets(tiny_hub) == 2  # each weight file downloaded once, then from the cache
    tiny_hub.stop()
    go_offline(monkeypatch)
    offline = run_pipeline_demo_and_app(
        run_cli, "offline", tmp_path, fixtures_dir, split, hub_overrides
    )
    assert online[0] == offline[0]  # the same weights: the same archive
    assert all(online) and all(offline)


def test_every_failure_is_one_line_before_anything_loads(tiny_hub, hub_overrides, monkeypatch):
    from referdino_plus.config import load_config
    from referdino_plus.preflight import model_problems

    def problems(**changes: str) -> list[str]:
        cfg = load_config([*hub_overrides, *(f"{k}={v}" for k, v in changes.items())])
        return model_problems(cfg, stages=(1, 2))

    # A damaged SAM 2.1 file in the cache, a gated repository, an unknown file and repository.
    sam2 = resolve_weights("hf://tiny/sam2/weights_propagating.pt").resolve()
    sam2.chmod(0o644)
    with open(sam2, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 8)
    listed = problems(
        **{
            "stage1.checkpoint": "hf://tiny/gated/weights_propagating.pt",
            "stage1.text_encoder": "hf://tiny/nothing/",
        }
    )
    assert len(listed) == 3 and all("\n" not in p for p in listed)
    assert listed[0].startswith("stage1.text_encoder=hf://tiny/nothing/: no repository")
    assert listed[1].startswith("stage1.checkpoint=hf://tiny/gated/weights_propagating.pt: ")
    assert "request access on https://huggingface.co/tiny/gated" in listed[1]
    assert listed[2].startswith(
        f"stage2.checkpoint=hf://tiny/sam2/weights_propagating.pt: the cached file {sam2} does "
        "not match the hub's SHA-256"
    )
    # Offline, nothing cached: names the file and the command that fetches it.
    go_offline(monkeypatch)
    listed = problems(**{"stage1.checkpoint": "hf://tiny/referdino/referdino_checkpoint.pth"})
    assert listed[0].startswith("stage1.text_encoder=hf://tiny/bert/: not in the Hugging")
    assert any(
        p.startswith("stage1.checkpoint=hf://tiny/referdino/referdino_checkpoint.pth: not in")
        and "HF_HUB_OFFLINE=1" in p
        and "`bash download_ckpts.sh hf://tiny/referdino/referdino_checkpoint.pth`" in p
        for p in listed
    )
    # The released defaults, none of them cached: each named with its key.
    listed = model_problems(load_config(), stages=(1, 2))
    assert [p.split(": not in the Hugging Face cache")[0] for p in listed] == [
        "stage1.model=mevis_swinb: text_encoder_type=hf://google-bert/bert-base-uncased/",
        "stage1.checkpoint=hf://liangtm/referdino/mevis_swinb.pth",
        "stage2.checkpoint=hf://facebook/sam2.1-hiera-large/sam2.1_hiera_large.pt",
    ]


@pytest.mark.slow
def test_a_refused_run_prints_one_line_per_problem_and_computes_nothing(
    tiny_hub, hub_overrides, make_split, tmp_path, run_cli
):
    split = make_split(
        tmp_path / "split", {"vid": {"frames": ["00000"], "expressions": {"0": "x"}}}
    )
    proc = run_cli(
        "--cpu", f"data.root={split}", f"work_dir={tmp_path / 'work'}",
        f"submission_dir={tmp_path / 'submissions'}", *hub_overrides,
        "stage2.checkpoint=hf://tiny/gated/weights_propagating.pt",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    (line,) = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert line.endswith(
        "cannot start: stage2.checkpoint=hf://tiny/gated/weights_propagating.pt: tiny/gated is a "
        "gated repository this account cannot read; request access on "
        "https://huggingface.co/tiny/gated and log in with `hf auth login` (or set HF_TOKEN)"
    )
    assert not (tmp_path / "submissions" / "fused.zip").exists()
    assert not list((tmp_path / "work").glob("stage*"))
