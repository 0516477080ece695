"""The one internal exception the validation steps raise: a category and a message."""

from __future__ import annotations


class Problem(Exception):
    """A validation step found the file unusable; ``category`` is one of errors.CATEGORIES."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


def corrupted(message: str) -> Problem:
    return Problem("corrupted", message)


def incompatible(message: str) -> Problem:
    return Problem("incompatible", message)


def unsafe(message: str) -> Problem:
    return Problem("unsafe", message)
