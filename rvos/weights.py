"""Model weights named by a local path or by a Hugging Face Hub reference, as local files.

Every weight setting (``stage1.checkpoint``, ``stage2.checkpoint``, the text encoder's folder,
SAM 3's folder) takes a local path or a hub reference in ``huggingface_hub``'s file-system form::

    hf://<owner>/<repo>[@<revision>]/<path>          a file
    hf://<owner>/<repo>[@<revision>]/[<folder>/]     a folder (ends in "/"; the repository's root
                                                      without a path)

:func:`resolve_weights` makes either a local path:

1. a local path is returned as it is (the loaders say what is wrong with it);
2. a reference whose released copy is in ``checkpoints/`` (under the working directory: the
   file's name, or the folder's or repository's name; where ``download_ckpts.sh`` put the
   weights before) is that copy, used as it is, online or not;
3. otherwise ``huggingface_hub.snapshot_download`` fetches the file (or the folder's files that
   the caller needs) into the Hugging Face cache, or finds it there: ``HF_HOME`` /
   ``HF_HUB_CACHE`` say where the cache is, ``HF_ENDPOINT`` which server (a mirror),
   ``HF_HUB_OFFLINE=1`` that only the cache is read, and the user's token (``hf auth login``,
   ``HF_TOKEN``) opens gated repositories;
4. every file is checked against what the hub says of it: its size, and the SHA-256 of an LFS
   file (the weights) or the git blob id of a plain one (a config). The hub's figures come from
   its ``paths-info`` answer when it can be reached, else from the cache's own record (a cached
   file is stored under the name of its ETag, which the hub sets to the LFS SHA-256 or the git
   blob id). ``huggingface_hub`` checks only the size of what it downloads, and nothing of what
   is already cached. A file that passed is remembered by its path, size and modification time
   (:func:`verification_marker`, in ``HF_HOME``), so multi-gigabyte files are hashed once.

Everything that can go wrong is a :class:`WeightsError`, one line naming the reference and what
to do: not cached while the hub cannot be reached (or ``HF_HUB_OFFLINE=1``), a gated repository
without access, a file that does not match the hub's checksum, an unknown repository, revision or
file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from tqdm.auto import tqdm

from rvos.checkpoints import CheckpointError, checkpoint_family_problem
from rvos.io import write_json

logger = logging.getLogger(__name__)

SCHEME = "hf://"
# Where download_ckpts.sh put the released weights before they went to the Hugging Face cache,
# relative to the working directory (as the configuration's paths are).
RELEASED_DIR = Path("checkpoints")
# Where a gated repository's access is requested (whatever HF_ENDPOINT says: mirrors serve files).
HUB_WEBSITE = "https://huggingface.co"
# The top-level command that fetches a reference where the hub can be reached.
DOWNLOAD_COMMAND = "bash download_ckpts.sh"
# Under HF_HOME: one small file per verified blob (see verification_marker).
VERIFIED_DIR = Path("referdino_plus") / "verified"
HASH_CHUNK_BYTES = 8 * 1024 * 1024  # read size when hashing a file
SHA256_HEX = 64  # an LFS file's ETag (and cache blob name): its SHA-256
GIT_SHA1_HEX = 40  # a plain file's ETag: its git blob id


class WeightsError(CheckpointError):
    """A hub reference that cannot be made a usable local file.

    Attributes:
        reference: the reference as written (``hf://...``).
        reason: one line saying what is wrong and what to do.
    """

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"{reference}: {reason}")


class ChecksumError(WeightsError):
    """A cached file whose size or checksum differs from the hub's.

    Attributes:
        blob: the file in the cache (what to delete).
    """

    def __init__(self, reference: str, reason: str, blob: Path) -> None:
        super().__init__(reference, reason)
        self.blob = blob


@dataclass(frozen=True)
class HubReference:
    """A parsed ``hf://`` reference.

    Attributes:
        repo_id: ``owner/repo``.
        revision: a branch, tag or commit; ``None``: the default branch.
        path: the file's path in the repository, or a folder's ending in ``/``; ``""``: the root.
    """

    repo_id: str
    revision: str | None
    path: str

    @property
    def is_folder(self) -> bool:
        return self.path == "" or self.path.endswith("/")

    @property
    def released_name(self) -> str:
        """The name of its copy in ``checkpoints/``: the file's, or the folder's (the
        repository's for its root)."""
        parts = [p for p in self.path.split("/") if p]
        return parts[-1] if parts else self.repo_id.split("/")[-1]

    def file(self, relative: str) -> HubReference:
        """The reference of ``relative``, a file in this folder."""
        return HubReference(self.repo_id, self.revision, self.path + relative)

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{revision}/{self.path}"


def is_hub_reference(value: str | os.PathLike | None) -> bool:
    """Whether ``value`` is written as a hub reference (``hf://...``)."""
    return isinstance(value, str) and value.startswith(SCHEME)


def parse_reference(value: str) -> HubReference:
    """``hf://<owner>/<repo>[@<revision>]/[<path>]`` as a :class:`HubReference`.

    Raises:
        WeightsError: not of that form (model repositories only).
    """
    if not is_hub_reference(value):
        raise WeightsError(str(value), f"not a hub reference ({SCHEME}<owner>/<repo>/<path>)")
    rest = value[len(SCHEME) :]
    parts = rest.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1] or parts[0] in ("datasets", "spaces"):
        raise WeightsError(
            value, f"expected {SCHEME}<owner>/<repo>[@<revision>]/<path> (a model repository)"
        )
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not name or not revision:
            raise WeightsError(value, "an empty repository name or revision around '@'")
    path = parts[2] if len(parts) == 3 else ""
    if any(part in ("..", ".") for part in path.split("/")) or path.startswith("/"):
        raise WeightsError(value, "the path in the repository must not contain '.', '..' or '//'")
    return HubReference(f"{owner}/{name}", revision, path)


def download_hint(reference: HubReference | str) -> str:
    """How to fetch ``reference`` into the cache (where the hub can be reached)."""
    return f"`{DOWNLOAD_COMMAND} {reference}`"


# --------------------------------------------------------------------------------------------------
# Resolving
# --------------------------------------------------------------------------------------------------


def resolve_weights(
    value: str | os.PathLike,
    *,
    folder_files: Sequence[str] = ("*",),
    optional_files: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """The local path of a weight setting: a path as it is, a hub reference resolved as the
    module docstring says (its released copy in ``checkpoints/``, else the verified file or
    folder in the Hugging Face cache, fetched if needed).

    Args:
        value: a local path or ``hf://...``.
        folder_files: for a folder: the files it needs, as paths or glob patterns relative to
            it (a path must be there, a pattern match at least one file); a file reference
            ignores them.
        optional_files: for a folder: more files to fetch when the repository has them.
        force: fetch again even when cached (a file that failed its check), skipping the copy
            in ``checkpoints/``.
    Raises:
        WeightsError: one line (see the module docstring).
    """
    if not is_hub_reference(value):
        return Path(value).expanduser()
    reference = parse_reference(str(value))
    released = released_copy(reference, required=folder_files)
    if released is not None and not force:
        logger.info("%s: using %s", reference, released)
        return released
    return fetch(reference, folder_files=folder_files, optional_files=optional_files, force=force)


def checkpoint_setting_problem(
    value: str | os.PathLike, *, key: str, family: str, hint: str
) -> str | None:
    """Why the weight setting ``key=value`` is not a usable ``family`` checkpoint, in one line,
    or ``None``: a hub reference that cannot be resolved (:func:`resolve_weights`), else
    :func:`rvos.checkpoints.checkpoint_family_problem` of the local file."""
    try:
        path = resolve_weights(value)
    except WeightsError as err:
        return f"{key}={err}"
    return checkpoint_family_problem(path, key=key, family=family, hint=hint)


def released_copy(reference: HubReference, *, required: Sequence[str] = ()) -> Path | None:
    """``checkpoints/<released name>`` when it is there: the file, or the folder with the
    ``required`` files (paths; patterns are not checked) of a folder reference."""
    candidate = RELEASED_DIR / reference.released_name
    if not reference.is_folder:
        return candidate if candidate.is_file() else None
    complete = all((candidate / name).is_file() for name in required if not is_pattern(name))
    return candidate if candidate.is_dir() and complete else None


def is_pattern(text: str) -> bool:
    return any(char in text for char in "*?[")


def fetch(
    reference: HubReference,
    *,
    folder_files: Sequence[str] = ("*",),
    optional_files: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """The reference's file or folder in the Hugging Face cache (downloaded if needed), its
    files checked against the hub (:func:`verify_snapshot`).

    Raises:
        WeightsError: see :func:`explain_hub_error` and :func:`verify_snapshot`.
    """
    from huggingface_hub import snapshot_download

    if reference.is_folder:
        required = [reference.path + name for name in folder_files]
        patterns = required + [reference.path + name for name in optional_files]
    else:
        required = patterns = [reference.path]
    quiet = not force and is_cached(reference, [p for p in required if not is_pattern(p)])
    try:
        snapshot = Path(
            snapshot_download(
                reference.repo_id,
                revision=reference.revision,
                allow_patterns=patterns,
                force_download=force,
                tqdm_class=QuietProgress if quiet else None,
            )
        )
    except Exception as err:
        explained = explain_hub_error(reference, err)
        if explained is err:  # not one the user can act on: with its traceback
            raise
        raise explained from None
    commit = snapshot.name
    local = snapshot / reference.path
    present = sorted(
        str(path.relative_to(snapshot))
        for pattern in patterns
        for path in snapshot.glob(pattern)
        if path.is_file()
    )
    missing = [
        name
        for name in required
        if not (any(snapshot.glob(name)) if is_pattern(name) else name in present)
    ]
    if missing:
        raise missing_files(reference, commit, missing)
    verify_snapshot(reference, snapshot, present)
    logger.info("%s: %s (commit %s)", reference, local, commit[:12])
    return local


def is_cached(reference: HubReference, paths: Sequence[str]) -> bool:
    """Whether the cache holds ``paths`` (in the repository) at the reference's revision as it
    last resolved (then a run shows no download progress for them)."""
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(
            try_to_load_from_cache(reference.repo_id, path, revision=reference.revision), str
        )
        for path in paths
    )


class QuietProgress(tqdm):
    """A progress bar that shows nothing (``snapshot_download``'s, for files already cached)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def missing_files(reference: HubReference, commit: str, missing: Sequence[str]) -> WeightsError:
    """The error for files the snapshot lacks: not in the repository (the hub says so), or not
    cached while the hub cannot be reached."""
    hub_files = hub_metadata(reference.repo_id, commit, missing)
    named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if hub_files is not None:  # the hub answered: the files are not there
        revision = reference.revision or "the default branch"
        return WeightsError(
            str(reference),
            f"no file {named} in {reference.repo_id} at {revision} (commit {commit[:12]}); "
            "check the reference",
        )
    return not_cached(reference, detail=f"{named} not in the cached snapshot")


# --------------------------------------------------------------------------------------------------
# Errors of the hub, in one line
# --------------------------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The server references are fetched from (``HF_ENDPOINT``, else the hub)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_mode() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def not_cached(reference: HubReference, *, detail: str = "") -> WeightsError:
    """Not in the cache, and the hub not asked (offline mode) or not reachable."""
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE=1" if offline_mode() else f"the hub ({hub_endpoint()}) cannot be reached"
    extra = f"; {detail}" if detail else ""
    return WeightsError(
        str(reference),
        f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}{extra}; run "
        f"{download_hint(reference)} where the hub can be reached, with the same HF_HOME (or set "
        "HF_ENDPOINT to a mirror)",
    )


def gated(reference: HubReference) -> WeightsError:
    return WeightsError(
        str(reference),
        f"{reference.repo_id} is a gated repository this account cannot read; request access on "
        f"{HUB_WEBSITE}/{reference.repo_id} and log in with `hf auth login` (or set HF_TOKEN)",
    )


def explain_hub_error(reference: HubReference, err: Exception) -> Exception:
    """``err`` of ``snapshot_download`` as a one-line :class:`WeightsError` (anything
    unexpected is returned as it is, to be raised with its traceback)."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, HFValidationError):
        return WeightsError(str(reference), f"not a valid repository id ({err}); check it")
    if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError: it is one
        return gated(reference)
    if isinstance(err, RepositoryNotFoundError):
        return WeightsError(
            str(reference),
            f"no repository {reference.repo_id} on {hub_endpoint()} that this account can see "
            "(a private one needs `hf auth login`); check the reference",
        )
    if isinstance(err, RevisionNotFoundError):
        return WeightsError(
            str(reference),
            f"no revision {reference.revision} in {reference.repo_id}; check the reference",
        )
    if isinstance(err, LocalEntryNotFoundError):
        return not_cached(reference)
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "an error"
        if status in (401, 403):
            return gated(reference)
        return WeightsError(
            str(reference),
            f"{hub_endpoint()} answered {status}; try again later, or set HF_ENDPOINT to a mirror",
        )
    if isinstance(err, OSError | httpx2.HTTPError):
        reason = " ".join(str(err).split()) or type(err).__name__
        return WeightsError(
            str(reference),
            f"the download failed ({reason}); run {download_hint(reference)} again",
        )
    return err


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the hub says a file is: its size, and the SHA-256 (LFS) or git blob id (plain).

    Attributes:
        size: bytes, or ``None`` when unknown.
        sha256: hex digest of an LFS file's content, else ``None``.
        git_sha1: a plain file's git blob id, else ``None``.
    """

    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` or ``git-sha1:<hex>``."""
        return f"sha256:{self.sha256}" if self.sha256 else f"git-sha1:{self.git_sha1}"


def hub_metadata(repo_id: str, commit: str, paths: Sequence[str]) -> dict[str, Expected] | None:
    """The hub's ``paths-info`` for ``paths`` at ``commit`` (files only; absent paths are left
    out), or ``None`` when the hub does not answer (offline mode, no connection, an error)."""
    if offline_mode() or not paths:
        return None if offline_mode() else {}
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = HfApi().get_paths_info(repo_id, list(paths), revision=commit)
    except (OfflineModeIsEnabled, HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        logger.debug("paths-info of %s at %s: %s", repo_id, commit, err)
        return None
    return {
        entry.path: (
            Expected(entry.lfs.size, sha256=entry.lfs.sha256)
            if entry.lfs is not None
            else Expected(entry.size, git_sha1=entry.blob_id)
        )
        for entry in entries
        if isinstance(entry, RepoFile)
    }


def cached_expectation(blob: Path, size: int | None) -> Expected | None:
    """What the cache recorded of a file: its blob's name is the ETag the hub sent (the LFS
    SHA-256, or the git blob id), ``size`` from the cached tree listing when there is one."""
    name = blob.name.lower()
    if len(name) == SHA256_HEX and all(c in "0123456789abcdef" for c in name):
        return Expected(size, sha256=name)
    if len(name) == GIT_SHA1_HEX and all(c in "0123456789abcdef" for c in name):
        return Expected(size, git_sha1=name)
    return None


def cached_sizes(repo_id: str, commit: str) -> dict[str, int]:
    """File sizes of the cached tree listing at ``commit`` (empty when there is none)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return {f.path: f.size for f in get_cached_repo_tree(repo_id, revision=commit)}
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return {}


def verify_snapshot(reference: HubReference, snapshot: Path, paths: Iterable[str]) -> None:
    """Check each of ``paths`` (relative to the ``snapshot`` folder of one commit) against the
    hub's figures (:func:`hub_metadata`, else :func:`cached_expectation`).

    Raises:
        ChecksumError: a file whose size or checksum differs, naming its blob to delete.
    """
    paths = list(paths)
    commit = snapshot.name
    base = reference.path if reference.is_folder else ""
    expected = hub_metadata(reference.repo_id, commit, paths)
    sizes = cached_sizes(reference.repo_id, commit) if expected is None else {}
    for path in paths:
        local = snapshot / path
        blob = local.resolve()
        want = (expected or {}).get(path) or cached_expectation(blob, sizes.get(path))
        if want is None:
            logger.debug("%s: nothing to check %s against", reference, local)
            continue
        problem = file_problem(blob, want)
        if problem is not None:
            shown = reference.file(path[len(base) :]) if reference.is_folder else reference
            raise ChecksumError(
                str(shown),
                f"the cached file {blob} {problem} (damaged, or changed since); delete it and run "
                f"{download_hint(shown)} to fetch it again",
                blob,
            )


def file_problem(path: Path, expected: Expected) -> str | None:
    """How ``path`` differs from ``expected`` (size, then checksum), or ``None``; a file that
    matched before, unchanged since (:func:`verification_marker`), is not read again."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"has {size} bytes, the hub's has {expected.size}"
    if marker_matches(path, expected):
        return None
    digest = file_digest(path, git=expected.sha256 is None)
    wanted = expected.sha256 or expected.git_sha1
    if digest != wanted:
        kind = "SHA-256" if expected.sha256 else "git blob id"
        return f"does not match the hub's {kind} ({digest[:12]}… instead of {wanted[:12]}…)"
    write_marker(path, expected)
    return None


def file_digest(path: Path, *, git: bool) -> str:
    """The SHA-256 of ``path``'s content, or (``git``) its git blob id (SHA-1 of
    ``blob <size>\\0`` and the content)."""
    if git:
        hasher = hashlib.sha1(usedforsecurity=False)
        hasher.update(f"blob {path.stat().st_size}\0".encode())
    else:
        hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def verification_marker(path: Path) -> Path:
    """Where the check of ``path`` (a resolved file) is remembered: a file in
    ``HF_HOME/referdino_plus/verified/`` named by a hash of the path."""
    from huggingface_hub import constants

    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return Path(constants.HF_HOME) / VERIFIED_DIR / f"{key}.json"


def _marker_record(path: Path, expected: Expected) -> dict[str, object]:
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "digest": expected.digest,
    }


def marker_matches(path: Path, expected: Expected) -> bool:
    """Whether ``path`` matched ``expected`` before and is unchanged (size, modification time)."""
    try:
        recorded = json.loads(verification_marker(path).read_text())
    except (OSError, ValueError):
        return False
    return recorded == _marker_record(path, expected)


def write_marker(path: Path, expected: Expected) -> None:
    """Remember that ``path`` matched ``expected`` (best effort: a read-only ``HF_HOME`` only
    means hashing again next time)."""
    try:
        write_json(verification_marker(path), _marker_record(path, expected))
    except OSError as err:
        logger.debug("cannot remember the check of %s: %s", path, err)


def forget_cached(blob: Path) -> None:
    """Delete a cached file that failed its check, the snapshot links to it and what was
    remembered of it, so that no run finds it again."""
    snapshots = blob.parent.parent / "snapshots"
    links = [p for p in snapshots.rglob("*") if p.is_symlink() and p.resolve() == blob.resolve()]
    for path in [*links, blob]:
        path.unlink(missing_ok=True)
    verification_marker(blob).unlink(missing_ok=True)
    logger.info("deleted %s", blob)
