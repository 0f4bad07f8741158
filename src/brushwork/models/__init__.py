"""Model files: reading, recognising and loading checkpoints (no sampling, no web)."""
from .detect import FAMILY_LABELS, ModelSpec, detect
from .errors import CheckpointNotFound, CorruptCheckpoint, ModelFileError, UnsafePickle, UnsupportedModel
from .files import open_tensor_file

__all__ = [
    "FAMILY_LABELS",
    "ModelSpec",
    "detect",
    "open_tensor_file",
    "CheckpointNotFound",
    "CorruptCheckpoint",
    "ModelFileError",
    "UnsafePickle",
    "UnsupportedModel",
]
