"""Errors raised by the backend. The plugin turns :class:`RsvlError` into
``QgsProcessingException`` in one place; the CLI prints its message on one line."""


class RsvlError(Exception):
    """Base class of every error the backend raises on purpose."""


class InputError(RsvlError):
    """A layer, file or parameter the user gave cannot be used as it is."""


class AlignmentError(InputError):
    """Layers are not on one grid and alignment was switched off."""


class LabelError(InputError):
    """Training or reference labels are missing, empty or inconsistent."""


class ModelMismatchError(InputError):
    """The inputs do not match what the model was trained on."""


class ModelFileError(InputError):
    """A model file is missing, unreadable or not an rsvl model."""


class TextEncoderError(InputError):
    """A text encoder cannot be found or loaded from the given local path."""


class CancelledError(RsvlError):
    """The user cancelled the job; outputs were not written."""


def count(n: int, noun: str) -> str:
    """'1 band', '3 bands': a number with its noun, in messages."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
