"""The hotkey table: one place that maps keys to commands, shown by ``?`` in the preview and
printed into the README by :func:`hotkeys_markdown`.

Keys follow what Avatarify users know. One clash is resolved here: Avatarify-style help on
``H`` would take the left key of the U / H / J / K crop cluster, so help is ``?`` (or ``/``, the
same key unshifted, or F1) and ``H`` moves the crop left.

Key codes come from ``cv2.waitKeyEx``, which differs per highgui backend: X11 keysyms on Qt and
GTK (GTK adds modifier state in bits 16+), ``VK << 16`` on Windows, Cocoa function-key codes on
macOS. :func:`key_name` turns all of them into one name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from avatarcam.controls import COMMANDS, CommandError, Controller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hotkey:
    """Keys (names from :func:`key_name`) -> a command with fixed arguments. ``label`` is how the
    help shows the keys; ``help`` overrides the command's own help text."""

    keys: tuple[str, ...]
    command: str
    args: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    help: str = ""

    @property
    def text(self) -> str:
        return self.help or COMMANDS[self.command].help


def _avatar_keys() -> tuple[Hotkey, ...]:
    return tuple(Hotkey((str(n),), "avatar", {"index": n}, "1-9", "jump to avatar N") for n in range(1, 10))


HOTKEYS: tuple[Hotkey, ...] = (
    *_avatar_keys(),
    Hotkey(("a",), "prev_avatar", label="A"),
    Hotkey(("d",), "next_avatar", label="D"),
    Hotkey(("0",), "passthrough", label="0", help="show the real camera (toggle)"),
    Hotkey(("x",), "calibrate", label="X"),
    Hotkey(("f",), "best_frame", label="F", help="toggle best-frame search (fomm)"),
    Hotkey(("w",), "zoom", {"step": 1}, "W", "zoom in (driver crop)"),
    Hotkey(("s",), "zoom", {"step": -1}, "S", "zoom out (driver crop)"),
    Hotkey(("up", "u"), "move", {"dy": -1}, "Up / U", "move the crop up"),
    Hotkey(("left", "h"), "move", {"dx": -1}, "Left / H", "move the crop left"),
    Hotkey(("down", "j"), "move", {"dy": 1}, "Down / J", "move the crop down"),
    Hotkey(("right", "k"), "move", {"dx": 1}, "Right / K", "move the crop right"),
    Hotkey(("z",), "reset_crop", label="Z", help="reset zoom and crop position"),
    Hotkey(("r",), "mirror_preview", label="R", help="mirror the preview"),
    Hotkey(("t",), "mirror_output", label="T", help="mirror the output"),
    Hotkey(("l",), "reload", label="L", help="reload the avatar folder"),
    Hotkey(("i",), "stats", label="I", help="stats overlay (preview only)"),
    Hotkey(("o",), "overlay", label="O", help="landmark / avatar ghost overlay for alignment (preview only)"),
    Hotkey(("p",), "freeze", label="P", help="freeze: hold the current output frame"),
    Hotkey(("b",), "brb", label="B", help="'be right back' picture"),
    Hotkey(("g",), "blur", label="G", help="blur the background of the real camera"),
    Hotkey(("?", "/", "f1"), "help", label="? / F1", help="this help"),
    Hotkey(("esc", "q"), "quit", label="Esc / Q", help="quit"),
)

# waitKeyEx codes of the keys that are not plain characters, per backend.
_SPECIAL: dict[int, str] = {
    27: "esc",
    # X11 keysyms (Qt and GTK backends on Linux)
    0xFF51: "left", 0xFF52: "up", 0xFF53: "right", 0xFF54: "down", 0xFFBE: "f1", 0xFF1B: "esc",
    # Windows: virtual-key code << 16
    0x250000: "left", 0x260000: "up", 0x270000: "right", 0x280000: "down", 0x700000: "f1",
    # macOS (Cocoa NSUpArrowFunctionKey ...)
    0xF700: "up", 0xF701: "down", 0xF702: "left", 0xF703: "right", 0xF704: "f1",
}


def key_name(code: int) -> str | None:
    """The name of a ``cv2.waitKeyEx`` code: a lower-case character ("a", "1", "?") or "left",
    "up", "right", "down", "esc", "f1"; None for keys without a name here (and for -1)."""
    if code < 0:
        return None
    # As is, then without GTK's modifier state (bits 16+), which Windows codes never need.
    for candidate in (code, code & 0xFFFF):
        if candidate in _SPECIAL:
            return _SPECIAL[candidate]
        if 32 < candidate < 127:
            return chr(candidate).lower()
    return None


def keymap() -> dict[str, Hotkey]:
    """Key name -> hotkey (every key appears once; checked by the tests)."""
    return {key: hk for hk in HOTKEYS for key in hk.keys}


def handle_key(controller: Controller, code: int) -> str | None:
    """Run the command bound to key ``code``; returns its name (None when the key is unbound).
    A command that cannot be carried out is reported in the preview, never raised: a stray key
    press must not end a call."""
    name = key_name(code)
    hotkey = keymap().get(name) if name is not None else None
    if hotkey is None:
        return None
    try:
        controller.execute(hotkey.command, dict(hotkey.args))
    except CommandError as exc:
        controller.notify(str(exc))
    except Exception as exc:  # noqa: BLE001 - see above
        log.exception("hotkey %s (%s) failed", name, hotkey.command)
        controller.notify(f"{hotkey.command} failed: {exc}")
    return hotkey.command


def _rows() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for hk in HOTKEYS:
        row = (hk.label or " / ".join(k.upper() for k in hk.keys), hk.text)
        if row not in rows:
            rows.append(row)
    return rows


def help_lines() -> tuple[str, ...]:
    """The hotkey help as text lines for the preview panel ("keys<TAB>action")."""
    return ("Hotkeys (? to close)", *(f"{k}\t{t}" for k, t in _rows()))


def hotkeys_markdown() -> str:
    """The hotkey table as Markdown (for the README)."""
    lines = ["| Key | Action |", "| --- | --- |"]
    lines.extend(f"| {k.replace('|', '&#124;')} | {t} |" for k, t in _rows())
    return "\n".join(lines) + "\n"
