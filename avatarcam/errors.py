"""A small typed error hierarchy. Every message says what went wrong and what to try."""
from __future__ import annotations


class AvatarcamError(Exception):
    """Base class of errors meant for the user (printed without a traceback by the CLI)."""


class ConfigError(AvatarcamError, ValueError):
    """Invalid configuration value or combination."""


class SourceError(AvatarcamError):
    """A camera, video or image cannot be opened or read."""


class SinkError(AvatarcamError):
    """An output (virtual camera, window, file) cannot be opened or written."""


class NoVirtualCameraError(SinkError):
    """No virtual camera backend is available on this machine."""


class AvatarError(AvatarcamError):
    """An avatar photo cannot be used (unreadable, no face, ...)."""


class NoFaceError(AvatarError):
    """No face was found where one is required."""


class WeightsError(AvatarcamError):
    """A checkpoint is missing, corrupt, of the wrong kind or fails verification."""


class EngineError(AvatarcamError):
    """An engine cannot be created or run."""


class AudioError(AvatarcamError):
    """Audio (PortAudio library, device, stream) is unavailable; the video keeps running without it."""
