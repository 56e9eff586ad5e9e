"""The weights folder: where checkpoints live, what is installed, cached and full verification.

Layout of the folder (all names relative to it):

* ``<filename>`` a downloaded checkpoint as published (e.g. ``vox-cpk.pth.tar``);
* ``<name>.safetensors`` a slim copy made by ``avatarcam weights add`` (generator + kp_detector);
* ``<file>.json`` what we know about ``<file>``: kind, config, sha256, size, origin;
* ``<file>.sha256`` a hash cache (sha256 with the size and mtime it was computed for), so a start-up
  check of an unchanged file costs a ``stat`` instead of hashing hundreds of megabytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from avatarcam.errors import WeightsError
from avatarcam.weights.registry import CONFIGS_DIR, REGISTRY, WeightSpec

ENV_VAR = "AVATARCAM_WEIGHTS"
SLIM_SUFFIX = ".safetensors"
_CHUNK = 4 << 20


def weights_dir(override: str | Path | None = None) -> Path:
    """The folder holding checkpoints (not created here).

    First match wins: ``override`` (from the CLI or the app config), ``$AVATARCAM_WEIGHTS``, the
    ``weights/`` folder of a source checkout we are running from, else the per-user data folder
    (e.g. ``~/.local/share/avatarcam/weights`` on Linux).
    """
    if override:
        return Path(override).expanduser()
    if env := os.environ.get(ENV_VAR):
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "avatarcam" / "__init__.py").is_file():
        return root / "weights"
    return Path(platformdirs.user_data_dir("avatarcam", appauthor=False)) / "weights"


# ---- hashing ----------------------------------------------------------------------------------

def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each hashlib algorithm name, in one pass over the file."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _hash_cache(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def remember_sha256(path: Path, sha256: str) -> None:
    """Store ``sha256`` as the hash of ``path`` as it is now (size + mtime)."""
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError):  # a read-only folder only costs a rehash next time
        _write_json(_hash_cache(path), record)


def sha256_of(path: Path, *, rehash: bool = False) -> str:
    """sha256 of ``path``; reuses the cached value while the size and mtime are unchanged."""
    st = path.stat()
    if not rehash:
        try:
            cached = json.loads(_hash_cache(path).read_text())
            if cached["size"] == st.st_size and cached["mtime_ns"] == st.st_mtime_ns:
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    sha = file_digests(path)["sha256"]
    remember_sha256(path, sha)
    return sha


# ---- metadata ---------------------------------------------------------------------------------

def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_meta(path: Path, **fields: Any) -> None:
    _write_json(meta_path(path), fields)


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Installed:
    """One checkpoint present in the weights folder.

    ``kind`` is ``"download"`` (a published file, checked against ``spec``) or ``"slim"`` (our
    safetensors copy). ``sha256``/``size`` are what the file must match (None: nothing to match).
    """

    name: str
    path: Path
    kind: str
    config: str
    sha256: str | None
    size: int | None
    spec: WeightSpec | None = None
    meta: dict[str, Any] | None = None

    @property
    def expected_from_registry(self) -> bool:
        return self.spec is not None and self.spec.sha256 is not None


def download_record(spec: WeightSpec, path: Path) -> Installed:
    meta = read_meta(path)
    # Unpublished hash: fall back to the one recorded when we downloaded it (trust on first use).
    sha = spec.sha256 or (meta or {}).get("sha256")
    size = spec.size or (meta or {}).get("size")
    return Installed(spec.name, path, "download", spec.config, sha, size, spec, meta)


def _as_slim(path: Path) -> Installed | None:
    meta = read_meta(path)
    if meta is None or meta.get("kind") != "slim":
        return None
    return Installed(path.name[: -len(SLIM_SUFFIX)], path, "slim", str(meta.get("config", "vox-256.yaml")),
                     meta.get("sha256"), meta.get("size"), REGISTRY.get(str(meta.get("matches"))), meta)


def installed(directory: str | Path | None = None) -> list[Installed]:
    """Everything usable in the folder: registry downloads first (registry order), then slim copies."""
    d = weights_dir(directory)
    found = [download_record(s, d / s.filename) for s in REGISTRY.values() if (d / s.filename).is_file()]
    slims = (_as_slim(p) for p in sorted(d.glob("*" + SLIM_SUFFIX)) if p.is_file()) if d.is_dir() else ()
    return found + [s for s in slims if s is not None]


def installed_weights(directory: str | Path | None = None) -> list[str]:
    """Names of the installed checkpoints (no hashing: for status displays)."""
    return list(dict.fromkeys(i.name for i in installed(directory)))


def check(item: Installed, *, rehash: bool = False) -> tuple[bool, str]:
    """Compare a file with what it must be. Returns ``(ok, detail)``; uses the hash cache unless ``rehash``."""
    if item.sha256 is None:
        return False, "no known sha256 to check against; re-download it or import it with `avatarcam weights add PATH`"
    size = item.path.stat().st_size
    if item.size is not None and size != item.size:
        return False, f"size {size:,} B, expected {item.size:,} B (truncated or a different file)"
    got = sha256_of(item.path, rehash=rehash)
    if got != item.sha256:
        return False, f"sha256 {got[:16]}..., expected {item.sha256[:16]}... (corrupt or a different file)"
    if item.kind == "download" and not item.expected_from_registry:
        return True, "matches the sha256 recorded at download (no published hash to compare with)"
    return True, "sha256 ok"


def verify(directory: str | Path | None = None) -> list[tuple[Installed, bool, str]]:
    """Rehash every installed checkpoint (never trusting the cache) and compare it with its record."""
    return [(item, *check(item, rehash=True)) for item in installed(directory)]


# ---- resolving what the engine loads ----------------------------------------------------------

def _config_file(value: str | Path, directory: Path) -> Path:
    s = str(value)
    if Path(s).name == s:  # a bare name: a packaged YAML, else one stored next to the weights
        for candidate in (CONFIGS_DIR / s, directory / s):
            if candidate.is_file():
                return candidate
    if (p := Path(s).expanduser()).is_file():
        return p
    packaged = ", ".join(sorted(c.name for c in CONFIGS_DIR.glob("*.yaml")))
    raise WeightsError(f"FOMM config {s!r} not found: not a packaged config ({packaged}), not in {directory}, "
                       "not a file.")


def how_to_get_weights(directory: Path, name: str | None = None) -> str:
    """The user-facing recipe for installing FOMM weights (used in every "missing weights" error)."""
    spec = REGISTRY.get(name or "") or REGISTRY["vox-cpk"]
    if spec.verifiable:
        cmd, what = f"avatarcam weights download {spec.name}", f"{spec.size / 1e6:.1f} MB, checked against its sha256"
    else:
        cmd, what = f"avatarcam weights download {spec.name} --allow-unverified", "no published sha256"
    return (
        f"To get them, run\n    {cmd}    ({what})\n"
        f"or download {spec.filename} in a browser (links in the README of {spec.source}) and run\n"
        f"    avatarcam weights add PATH\n"
        f"Weights go to {directory} (set {ENV_VAR} for another folder). Licence: {spec.licence}.\n"
        "`--engine mesh` works without any weights."
    )


def resolve_fomm_weights(
    name_or_path: str | Path | None = None,
    *,
    config: str | Path | None = None,
    directory: str | Path | None = None,
) -> tuple[Path, Path]:
    """Find the checkpoint and FOMM YAML the engine should load: ``(checkpoint_path, config_path)``.

    ``name_or_path`` is a registry or slim-copy name (``"vox-cpk"``), a checkpoint file, or None for
    the first installed one (registry order, then slim copies). Installed files are verified against
    their record through the hash cache; a file given by path is the caller's and is not (loading
    still rejects HTML, truncated or foreign files). ``config`` overrides the YAML (a packaged name
    such as ``vox-256.yaml`` or a path); by default it comes from the record, else ``vox-256.yaml``.
    Raises :class:`WeightsError` saying how to get weights when none are installed.
    """
    d = weights_dir(directory)
    if name_or_path is not None and _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint file not found: {path}. "
                               "Give an existing file or a name from `avatarcam weights list`.")
        spec = next((s for s in REGISTRY.values() if s.filename == path.name), None)
        cfg = config or (read_meta(path) or {}).get("config") or (spec.config if spec else "vox-256.yaml")
        return path, _config_file(cfg, path.parent)

    items = installed(d)
    if name_or_path is not None:
        name = str(name_or_path)
        items = sorted((i for i in items if i.name == name), key=lambda i: i.kind != "slim")  # slim loads faster
        if not items and name in REGISTRY:
            raise WeightsError(f"FOMM weights {name!r} are not installed in {d}.\n" + how_to_get_weights(d, name))
        if not items:
            raise WeightsError(f"no FOMM weights named {name!r} in {d} (downloadable: {', '.join(REGISTRY)}; "
                               "or give a checkpoint path).\n" + how_to_get_weights(d))
    if not items:
        raise WeightsError(f"no FOMM weights are installed in {d}.\n" + how_to_get_weights(d))
    item = items[0]
    ok, detail = check(item)
    if not ok:
        raise WeightsError(
            f"{item.path} failed verification: {detail}. Run `avatarcam weights verify`, then delete it and "
            f"download or add it again."
        )
    return item.path, _config_file(config or item.config, d)


def _looks_like_path(value: str | Path) -> bool:
    s = str(value)
    return isinstance(value, Path) or os.sep in s or "/" in s or s.endswith((".tar", ".pth", ".pt", SLIM_SUFFIX))
