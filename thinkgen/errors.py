"""Error classes. Every user-facing error names the bad value and the fix."""
from __future__ import annotations


class ThinkgenError(Exception):
    """Base class of every error thinkgen raises on purpose."""


class InvalidInputError(ThinkgenError, ValueError):
    """A request argument is out of range or malformed (HTTP 400, CLI exit 2)."""


class InvalidImageError(InvalidInputError):
    """An input image cannot be decoded or breaks the image policy."""


class CheckpointError(ThinkgenError):
    """A checkpoint is missing, torn, or does not match the model (CLI exit 3)."""


class ConfigError(ThinkgenError, ValueError):
    """A training / evaluation config value is invalid (CLI exit 2)."""


class GenerationError(ThinkgenError, RuntimeError):
    """Generation failed for a reason that is not the caller's input."""
