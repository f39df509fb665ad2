"""Exceptions with messages meant for users: every failure a user can cause has its own type."""


class SmoothDiffusionError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class RequestError(SmoothDiffusionError, ValueError):
    """A request field is missing, out of range or inconsistent."""


class ModelFilesError(SmoothDiffusionError, FileNotFoundError):
    """A model file or folder is missing or unreadable (names the file and how to provide it)."""


class LoraError(SmoothDiffusionError, ValueError):
    """Base class of LoRA file problems."""


class NotALoraError(LoraError):
    """The file is readable but holds no LoRA tensors."""


class CorruptLoraError(LoraError):
    """The file is truncated, damaged or not a tensor file at all."""


class LoraArchitectureError(LoraError):
    """The LoRA was made for another model family (e.g. an SDXL LoRA on an SD1 model)."""


class LoraShapeError(LoraError):
    """A LoRA layer does not fit the shape of the model layer it targets."""


class Interrupted(SmoothDiffusionError):
    """The user interrupted a running job; raised from a progress callback."""
