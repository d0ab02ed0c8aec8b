"""One base error; each subclass's docstring is its default, plain-words message.

``permanent`` says whether retrying could ever help: a file that is not audio
stays not audio, while a full disk or a model that failed to load may recover.
"""

from __future__ import annotations


class WhisperdError(Exception):
    """whisperd could not finish this."""

    permanent = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(WhisperdError):
    """The configuration is not valid."""

    permanent = True


class AudioError(WhisperdError):
    """This file could not be read as audio."""

    permanent = True


class NotAudioError(AudioError):
    """This file is not audio or video that whisperd can read. Convert it to a common format (m4a, mp3, wav) and drop it in again."""


class EmptyFileError(NotAudioError):
    """This file is empty (0 bytes), so there is nothing to transcribe."""


class NoAudioStreamError(AudioError):
    """This file has no audio track, so there is nothing to transcribe."""


class CorruptAudioError(AudioError):
    """This recording is damaged and could not be decoded. Try exporting it again from the app that made it."""


class SourceGoneError(WhisperdError):
    """The file was moved or deleted after it was queued, so there was nothing left to transcribe."""

    permanent = True


class UnsafePathError(WhisperdError):
    """This path leads outside the configured folders, so whisperd refused to touch it."""

    permanent = True


class ModelError(WhisperdError):
    """The speech model could not be loaded."""


class DatabaseError(WhisperdError):
    """The queue database could not be opened."""
