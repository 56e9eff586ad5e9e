"""Audio: delayed microphone pass-through (lip sync) and a voice-driven synthetic expression.

Importing this package never touches PortAudio; ``sounddevice`` is imported when a stream opens or
devices are listed, and failures surface as :class:`avatarcam.errors.AudioError`.
"""
from avatarcam.audio.config import AudioConfig
from avatarcam.audio.delay import DelayLine, DelaySmoother
from avatarcam.audio.devices import AudioDevice, audio_status, describe_audio_devices, list_audio_devices
from avatarcam.audio.passthrough import AudioPassthrough
from avatarcam.audio.voice import IdleMotion, SyntheticDriver, SyntheticExpression, VoiceMouth, rms_dbfs

__all__ = [
    "AudioConfig", "AudioDevice", "AudioPassthrough", "DelayLine", "DelaySmoother", "IdleMotion",
    "SyntheticDriver", "SyntheticExpression", "VoiceMouth", "audio_status", "describe_audio_devices",
    "list_audio_devices", "rms_dbfs",
]
