"""Errors raised while reading and recognising model files.  Each message says
what was found and what the user can do about it."""
from __future__ import annotations


class ModelFileError(ValueError):
    """A model file could not be used."""


class CheckpointNotFound(ModelFileError):
    """No checkpoint matches the name or path the user gave."""


class CorruptCheckpoint(ModelFileError):
    """The file exists but is truncated, damaged or not a tensor file at all."""


class UnsupportedModel(ModelFileError):
    """A readable tensor file that is not a checkpoint we can generate with."""


class UnsafePickle(ModelFileError):
    """A .ckpt file asked to run code while it was being read."""
