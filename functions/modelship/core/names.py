"""The one grammar of model names, versions and references (``name`` or ``name:version``).

Used by the repository, the HTTP routes, the CLI, ``MODELSHIP_PRELOAD`` and the CDK context, so a value
that synthesizes is a value the runtime accepts. Runs before any I/O: a hostile name never reaches a path.
Imports nothing but the core's errors, so the CDK app can use it without onnxruntime or numpy.
"""

from __future__ import annotations

import re
from typing import Final

from modelship.core.errors import BadRequest

MODEL_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_VERSION: Final = 2**31 - 1
_MAX_VERSION_DIGITS: Final = len(str(MAX_VERSION))


def is_valid_model_name(name: str) -> bool:
    return MODEL_NAME_PATTERN.fullmatch(name) is not None and ".." not in name


def validate_model_name(name: str) -> str:
    if not is_valid_model_name(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise BadRequest(
            f"invalid model name {shown!r}: use 1-128 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit, and no '..'"
        )
    return name


def version_from_text(text: str) -> int | None:
    """The version that ``text`` spells, or None. No leading zeros: "01" and "1" must not be two
    spellings of one version (they would be two keys in a store)."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_VERSION_DIGITS or text.startswith("0"):
        return None
    version = int(text)
    return version if version <= MAX_VERSION else None


def parse_version(text: str) -> int:
    """A version from a URL or the command line: a positive decimal integer."""
    version = version_from_text(text)
    if version is None:
        raise BadRequest(f"invalid model version {text[:32]!r}: versions are positive integers")
    return version


def parse_model_reference(text: str) -> tuple[str, int | None]:
    """``"iris"`` → ``("iris", None)`` (the latest version); ``"iris:3"`` → ``("iris", 3)``."""
    name, separator, version = text.strip().partition(":")
    return validate_model_name(name.strip()), parse_version(version.strip()) if separator else None


def parse_model_references(text: str) -> tuple[tuple[str, int | None], ...]:
    """A comma-separated list of references, as in ``MODELSHIP_PRELOAD``; blanks are skipped."""
    references = tuple(parse_model_reference(item) for item in text.split(",") if item.strip())
    if len(set(references)) != len(references):
        raise BadRequest(f"model references {text.strip()!r} name a model twice")
    return references
