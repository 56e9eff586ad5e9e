"""Per-avatar settings that survive restarts: calibration, driver crop zoom / offset, output mirror.

One JSON file per avatar (``<content hash>.json``) plus, when the engine has a calibration, an
``.npz`` of its arrays beside it, in the per-user config folder (``platformdirs``). Keyed by the
avatar's content hash, so renaming a photo keeps its settings and editing it starts afresh.
Every write goes to a temporary file renamed into place: a crash never leaves half a file, and
an unreadable file is reported and ignored (the avatar then starts from the defaults).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VERSION = 1
_HASH = re.compile(r"^[0-9A-Za-z_-]{1,128}$")  # content hashes are hex; never a path


def default_settings_dir() -> Path:
    """``<user config dir>/avatarcam/avatars`` (e.g. ``~/.config/avatarcam/avatars`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("avatarcam")) / "avatars"


@dataclass(frozen=True, eq=False)
class AvatarSettings:
    """What is remembered for one avatar; None = not set (use the configured default).

    ``zoom``: driver crop zoom (> 1 = tighter). ``offset``: driver crop offset (x, y) in crop sides.
    ``mirror_output``: mirror the output stream. ``calibration``: the engine's neutral reference,
    as returned by :meth:`Engine.get_calibration` (name -> array).
    """

    zoom: float | None = None
    offset: tuple[float, float] | None = None
    mirror_output: bool | None = None
    calibration: dict[str, np.ndarray] | None = None


class SettingsStore:
    """Loads and saves :class:`AvatarSettings` by avatar content hash under ``folder``
    (default: :func:`default_settings_dir`)."""

    def __init__(self, *, folder: Path | str | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_settings_dir()

    def _paths(self, content_hash: str) -> tuple[Path, Path]:
        if not _HASH.match(content_hash):
            raise ValueError(f"content_hash must be letters, digits, '-' or '_', got {content_hash!r}")
        return self.folder / f"{content_hash}.json", self.folder / f"{content_hash}.npz"

    def load(self, content_hash: str) -> AvatarSettings:
        """The stored settings, or all-None when there are none or they cannot be read."""
        json_path, npz_path = self._paths(content_hash)
        if not json_path.is_file():
            return AvatarSettings()
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"unknown format {data.get('version') if isinstance(data, dict) else data!r}")
            zoom = data.get("zoom")
            zoom = None if zoom is None else float(zoom)
            if zoom is not None and not (math.isfinite(zoom) and zoom > 0):
                raise ValueError(f"bad zoom {zoom}")
            offset = data.get("offset")
            offset = None if offset is None else (float(offset[0]), float(offset[1]))
            mirror = data.get("mirror_output")
            if mirror is not None and not isinstance(mirror, bool):
                raise ValueError(f"bad mirror_output {mirror!r}")
            calibration = None
            if data.get("calibration"):
                with np.load(npz_path, allow_pickle=False) as z:
                    calibration = {k: np.array(z[k]) for k in z.files}
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            log.warning("ignoring unreadable avatar settings %s (%s); delete the file to silence this",
                        json_path, exc)
            return AvatarSettings()
        return AvatarSettings(zoom=zoom, offset=offset, mirror_output=mirror, calibration=calibration)

    def save(self, content_hash: str, settings: AvatarSettings) -> None:
        """Store ``settings`` (a folder that cannot be written costs a warning, never the stream)."""
        json_path, npz_path = self._paths(content_hash)
        data = {
            "version": VERSION,
            "zoom": settings.zoom,
            "offset": list(settings.offset) if settings.offset is not None else None,
            "mirror_output": settings.mirror_output,
            "calibration": bool(settings.calibration),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if settings.calibration:
                # The arrays first: a JSON that names a calibration always finds it.
                self._replace(npz_path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in
                                                                 settings.calibration.items()}))
            self._replace(json_path, lambda f: f.write(json.dumps(data, indent=1).encode("utf-8")))
            if not settings.calibration and npz_path.exists():
                npz_path.unlink()
        except OSError as exc:
            log.warning("could not save avatar settings to %s (%s)", self.folder, exc)

    def _replace(self, path: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=path.suffix + ".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
