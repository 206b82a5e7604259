"""One exception family for everything lesion refuses.

Every message names what was wrong and what was expected, e.g.
``unknown layer 'fc3'; closest: fc2, fc1; layers with units: relu1 (512), relu2 (512)``.
"""

from __future__ import annotations


class LesionError(Exception):
    """Base class of every error lesion raises on bad input."""


class SiteError(LesionError, KeyError):
    """A layer name that is not a usable site (unknown, non-tensor output, reused module)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnitError(LesionError, IndexError):
    """A unit address that cannot be parsed or lies outside its layer's width."""


class DataError(LesionError, ValueError):
    """Data that does not fit the model: wrong shapes, labels out of range, empty, NaN."""


class ModelFileError(LesionError, ValueError):
    """A model file that is corrupt, not ours, or pickled (refused)."""


class LesionNote(UserWarning):
    """Not an error, but worth knowing: something lesion converted or chose for the user (float64 arrays
    to float32, a default image size, labels as their distinct values), or a result that is valid but
    probably not what was meant (a lesion at positions the metric does not score cannot change it)."""


__all__ = ["DataError", "LesionError", "LesionNote", "ModelFileError", "SiteError", "UnitError"]
