"""The exception hierarchy, and the one place pyarrow's errors are mapped.

pyarrow turns a gRPC INVALID_ARGUMENT into ``pa.ArrowInvalid`` and NOT_FOUND
into ``pa.ArrowKeyError`` (not into ``FlightError``); the other codes arrive
as ``pyarrow.flight.Flight*Error``. Every exception raised here keeps the
pyarrow one as its ``__cause__``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pyarrow as pa
import pyarrow.flight as flight


class PixelQueryError(Exception):
    """Base class of every error this package raises."""


class InvalidRequest(PixelQueryError, ValueError):
    """The server rejected the request (gRPC INVALID_ARGUMENT); the message
    names the field and the bad value. Nothing was written."""


class NotFound(PixelQueryError, KeyError):
    """A collection, scene or tile does not exist (gRPC NOT_FOUND)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(PixelQueryError):
    """Creating something that exists already (gRPC ALREADY_EXISTS)."""


class Unauthorized(PixelQueryError):
    """Missing or wrong token, or a role that may not do this."""


class ServerError(PixelQueryError):
    """The server failed or could not be reached."""


def _message(e: BaseException) -> str:
    text = str(e)
    # "Flight returned <code> error, with message: <server's message>"
    if "with message: " in text:
        text = text.split("with message: ", 1)[1]
    # pyarrow appends its own context after the server's message.
    for marker in (". gRPC client debug context", ". Detail:"):
        if marker in text:
            text = text.split(marker, 1)[0]
    return text


def translate(e: BaseException) -> PixelQueryError:
    """The package exception for a pyarrow exception."""
    msg = _message(e)
    if isinstance(e, (flight.FlightUnauthenticatedError, flight.FlightUnauthorizedError)):
        return Unauthorized(msg)
    if isinstance(e, pa.ArrowKeyError):
        return NotFound(msg)
    if isinstance(e, pa.ArrowInvalid):
        return InvalidRequest(msg)
    if "returned already exists error" in str(e):
        return AlreadyExists(msg)
    return ServerError(msg)


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Re-raises pyarrow exceptions as package exceptions, ``from`` them."""
    try:
        yield
    except PixelQueryError:
        raise
    except (pa.ArrowException, flight.FlightError) as e:
        raise translate(e) from e
