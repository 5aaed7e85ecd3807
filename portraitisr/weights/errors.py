"""The errors of the weights floor: what was wanted, where it was looked for, how to provide it.

Every failure to find, download, verify or load weights is one of these four classes, each with a message a user
can act on; the fields (``wanted``, ``looked``, ``url``, ``expected``, ``got``) keep the same facts for programs.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Optional

__all__ = ['WeightsNotFoundError', 'ChecksumError', 'CheckpointLoadError', 'InsecureURLError', 'weights_not_found']


class WeightsNotFoundError(FileNotFoundError):
    """Weights are neither at the given place nor in any cache, and were not (or could not be) downloaded.

    The message names the wanted file (or hub repo), every place looked at and how to provide it.
    ``wanted``, ``looked`` and ``url`` keep the same facts for programs.
    """

    def __init__(self, message: str, *, wanted: Optional[str] = None, looked: Sequence[str] = (),
                 url: Optional[str] = None) -> None:
        # One positional argument only: OSError would otherwise format the message as "[Errno ...]".
        super().__init__(message)
        self.wanted = wanted
        self.looked = list(looked)
        self.url = url


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the expected one (``expected`` and ``got`` hold both digests)."""

    def __init__(self, message: str, *, expected: Optional[str] = None, got: Optional[str] = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class CheckpointLoadError(pickle.UnpicklingError, ValueError):
    """A checkpoint cannot be loaded safely (it needs arbitrary unpickling) or is not a checkpoint at all.

    Also a ``ValueError``: it is bad input, and callers that report bad input in one line catch it as such.
    The message is one line.
    """


class InsecureURLError(OSError):
    """A download URL (or a redirect on the way) that is not https, or that downgrades the connection."""


def weights_not_found(headline: str, looked: Sequence[str], hints: Sequence[str], *, wanted: str,
                      url: Optional[str] = None, reason: Optional[str] = None) -> WeightsNotFoundError:
    """One error that says what is wanted, why it failed, every place looked at and how to provide it."""
    lines = [headline]
    if reason:
        lines.append(reason)
    lines.append('Looked in:')
    lines += [f'  - {place}' for place in looked]
    lines.append('How to provide it:')
    lines += [f'  - {hint}' for hint in hints]
    return WeightsNotFoundError('\n'.join(lines), wanted=wanted, looked=looked, url=url)
