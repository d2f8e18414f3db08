"""Validation of model names and versions. Runs before any I/O, so a hostile name never reaches a path."""

from __future__ import annotations

import re
from typing import Final

from modelship.errors import BadRequest

MODEL_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_VERSION: Final = 2**31 - 1


def validate_model_name(name: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise BadRequest(
            f"invalid model name {shown!r}: use 1-128 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit, and no '..'"
        )
    return name


def parse_version(text: str) -> int:
    """A version from a URL or the command line: a positive decimal integer."""
    # No leading zeros: "01" and "1" must not be two spellings of one version.
    if not text.isascii() or not text.isdigit() or len(text) > 10 or text.startswith("0"):
        raise BadRequest(f"invalid model version {text[:32]!r}: versions are positive integers")
    version = int(text)
    if not 1 <= version <= MAX_VERSION:
        raise BadRequest(f"invalid model version {text!r}: versions are positive integers")
    return version
