"""What a prediction archive may hold before the evaluator refuses it: ``evaluation.limits``.

The evaluator scores archives it did not write (a challenge server's uploads), so its memory and
time are bounded by these limits whatever an archive holds. The values are written once, in
``configs/pipeline.yaml`` (``evaluation.limits``, each with its reason), and overridden on the
command line like any setting (``evaluation.limits.max_member_mib=64``); docs/benchmarks.md
(Limits of the evaluator) explains each one and when to raise it.

- :class:`ArchiveLimits`: the section, typed, every field with its declared range;
- :func:`default_limits`: the YAML's values (what the Python API uses when given none);
- :func:`limits_with_overrides`: those values with ``evaluation.limits.<key>=<value>`` words.

:mod:`rvos.archive_reader` checks them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rvos.options import OptionError, bounded, check_declared

# configs/ of the repository, linked into this package (and copied into a wheel): the one file
# holding the defaults.
PIPELINE_YAML = Path(str(resources.files("rvos") / "configs" / "pipeline.yaml"))
SECTION = "evaluation.limits"
MIB = 1 << 20


@dataclass
class ArchiveLimits:
    """The ``evaluation.limits`` section (values and reasons: ``configs/pipeline.yaml``).

    Attributes:
        max_members: entries in a zip's directory (read from its end record before the
            directory itself).
        max_directory_mib: size of a zip's central directory, which is read whole.
        max_member_mib: uncompressed size of one member (also one file of a folder).
        max_total_mib: uncompressed size of all members of a zip together.
        max_ratio: uncompressed size / compressed size of one member.
        max_pixels: width x height of one PNG, read from its header before decoding.
    """

    SECTION = SECTION

    max_members: int = bounded(1)
    max_directory_mib: int = bounded(1)
    max_member_mib: int = bounded(1)
    max_total_mib: int = bounded(1)
    max_ratio: float = bounded(1)
    max_pixels: int = bounded(1)

    def __post_init__(self) -> None:
        check_declared(self)

    @property
    def directory_bytes(self) -> int:
        return self.max_directory_mib * MIB

    @property
    def member_bytes(self) -> int:
        return self.max_member_mib * MIB

    @property
    def total_bytes(self) -> int:
        return self.max_total_mib * MIB


@functools.cache
def _yaml_section() -> dict:
    """``evaluation.limits`` of ``configs/pipeline.yaml``, as plain values."""
    section = OmegaConf.select(OmegaConf.load(PIPELINE_YAML), SECTION)
    return OmegaConf.to_container(section)


def default_limits() -> ArchiveLimits:
    """The limits written in ``configs/pipeline.yaml``."""
    return limits_with_overrides(())


def limits_with_overrides(overrides: Sequence[str]) -> ArchiveLimits:
    """The YAML's limits with ``evaluation.limits.<key>=<value>`` words applied, checked.

    Raises:
        OptionError: one line naming the word: not a key of the section, a value of the wrong
            type, or a value outside the key's range.
    """
    fields = {f.name for f in dataclasses.fields(ArchiveLimits)}
    prefix = f"{SECTION}."
    words = []
    for word in overrides:
        key, _, value = word.partition("=")
        name = key.removeprefix(prefix)
        if not key.startswith(prefix) or name not in fields:
            raise OptionError(
                f"{word}: not a setting of {SECTION} (the settings: "
                f"{', '.join(f'{prefix}{field}' for field in sorted(fields))}); other settings "
                "are the application's: referdino-plus evaluate PRED key=value"
            )
        words.append(f"{name}={value}")
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(ArchiveLimits),
            _yaml_section(),
            OmegaConf.from_dotlist(words),
        )
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        cause: BaseException = err
        while cause.__cause__ is not None:  # a range check's own error, wrapped by OmegaConf
            cause = cause.__cause__
        if isinstance(cause, OptionError):
            raise OptionError(str(cause)) from None
        first = " ".join(str(err).strip().splitlines()[0].split())
        key = getattr(err, "full_key", None)
        raise OptionError(f"{SECTION}{f'.{key}' if key else ''}: {first}") from None
