"""Import a user's FOMM checkpoint: check its keys and shapes, store a slim safetensors copy.

The slim copy holds only what inference needs (generator and kp_detector, keys prefixed
``generator.`` / ``kp_detector.``), optionally in fp16: about 240 MB instead of 730 MB in fp32,
120 MB in fp16. It is read back by :func:`avatarcam.weights.checkpoint.read_fomm_state`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from avatarcam.errors import WeightsError
from avatarcam.weights.checkpoint import MODULES, read_fomm_state
from avatarcam.weights.registry import CONFIGS_DIR, REGISTRY
from avatarcam.weights.store import SLIM_SUFFIX, file_digests, remember_sha256, weights_dir, write_meta

MANIFESTS_DIR = Path(__file__).with_name("manifests")
Shapes = dict[str, dict[str, tuple[int, ...]]]  # module -> state_dict key -> shape


def _model_params(config: Path) -> dict[str, Any]:
    try:
        params = (yaml.safe_load(config.read_text()) or {})["model_params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise WeightsError(f"{config} is not a readable FOMM YAML with model_params ({exc}).") from exc
    # The discriminator is not part of inference, so configs differing only there share a manifest.
    return {k: v for k, v in params.items() if k != "discriminator_params"}


def _shapes_from_manifest(data: Mapping[str, Any]) -> Shapes:
    """Accepts our compact ``{key: shape}`` form and the fixtures' ``{"entries": [[key, shape, dtype]]}``."""
    out: Shapes = {}
    for m in MODULES:
        section = data[m]
        pairs = ((e[0], e[1]) for e in section["entries"]) if "entries" in section else section.items()
        out[m] = {str(k): tuple(int(n) for n in shape) for k, shape in pairs}
    return out


def expected_shapes(config: str | Path, manifest: str | Path | Mapping[str, Any] | None = None) -> Shapes:
    """State-dict keys and shapes a checkpoint for ``config`` must have (kp_detector and generator).

    ``manifest`` (a JSON path or parsed dict) wins when given. Otherwise a packaged manifest whose
    ``model_params`` equal the config's is used (vox-256 and vox-adv-256 share one), else the shapes
    come from building the model for the config on the ``meta`` device (no memory, no weights).
    """
    if manifest is not None:
        data = manifest if isinstance(manifest, Mapping) else json.loads(Path(manifest).read_text())
        return _shapes_from_manifest(data)
    path = _config_path(config)
    params = _model_params(path)
    for candidate in sorted(MANIFESTS_DIR.glob("*.json")):
        data = json.loads(candidate.read_text())
        if data.get("model_params") == params:
            return _shapes_from_manifest(data)
    try:
        from avatarcam.models.fomm import FommConfig
    except ImportError as exc:
        raise WeightsError(f"cannot check a checkpoint for {path}: no packaged key manifest matches it.") from exc
    cfg = FommConfig.load(path)
    with torch.device("meta"):
        modules = {"kp_detector": cfg.build_kp_detector(), "generator": cfg.build_generator()}
    return {m: {k: tuple(v.shape) for k, v in mod.state_dict().items()} for m, mod in modules.items()}


def check_fomm_state(
    state: Mapping[str, Mapping[str, torch.Tensor]], expected: Shapes, origin: str = "checkpoint"
) -> None:
    """Raise :class:`WeightsError` unless ``state`` has exactly the expected keys and shapes."""
    problems = []
    for m in MODULES:
        got, want = state.get(m, {}), expected[m]
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        shapes = [f"{k} {list(got[k].shape)} != {list(s)}"
                  for k, s in want.items() if k in got and tuple(got[k].shape) != s]
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if keys:
                problems.append(f"{m}: {len(keys)} {label} ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})")
    if problems:
        raise WeightsError(
            f"{origin} is not a FOMM checkpoint for this config: " + "; ".join(problems)
            + ". Pick the YAML it was trained with (--config), or use another checkpoint."
        )


def _config_path(config: str | Path) -> Path:
    if Path(str(config)).name == str(config) and (CONFIGS_DIR / str(config)).is_file():
        return CONFIGS_DIR / str(config)
    path = Path(config).expanduser()
    if not path.is_file():
        packaged = ", ".join(sorted(p.name for p in CONFIGS_DIR.glob("*.yaml")))
        raise WeightsError(f"FOMM config {config!r} not found (packaged: {packaged}; or give a YAML path).")
    return path


def default_name(path: Path) -> str:
    """``vox-adv-cpk.pth.tar`` -> ``vox-adv-cpk``; anything unsafe for a file name becomes ``_``."""
    name = path.name
    for suffix in (".pth.tar", ".safetensors", ".pth", ".tar", ".pt", ".ckpt"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "fomm"


def add_checkpoint(
    path: str | Path,
    *,
    name: str | None = None,
    config: str | Path | None = None,
    fp16: bool = False,
    directory: str | Path | None = None,
    manifest: str | Path | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Check ``path`` is a FOMM checkpoint for ``config`` and store ``<name>.safetensors`` in the weights folder.

    ``config``: a packaged YAML name or a YAML path; by default the registry's for a known file
    (matched by sha256, then by name), else ``vox-256.yaml``. A custom YAML is copied next to the
    slim file. ``fp16`` halves the file (floats only; refused if a value overflows fp16).
    ``manifest`` overrides the expected keys (see :func:`expected_shapes`). Returns the new file.
    """
    src = Path(path).expanduser()
    try:
        state = read_fomm_state(src)
    except WeightsError as exc:
        raise WeightsError(f"not added: {exc}") from exc
    source_sha = file_digests(src)["sha256"]
    known = next((s for s in REGISTRY.values() if s.sha256 == source_sha), None)
    name = name or (known.name if known else default_name(src))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise WeightsError(f"invalid name {name!r}: use letters, digits, '.', '_' or '-'.")
    spec = known or REGISTRY.get(name)
    config = config or (spec.config if spec else "vox-256.yaml")
    cfg_path = _config_path(config)
    check_fomm_state(state, expected_shapes(cfg_path, manifest), str(src))

    d = weights_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{name}{SLIM_SUFFIX}"
    if final.exists() and not overwrite:
        raise WeightsError(f"{final} already exists; choose another --name or pass --force to replace it.")
    flat: dict[str, torch.Tensor] = {}
    for m in MODULES:
        for key, tensor in state[m].items():
            t = tensor.detach().contiguous()
            if fp16 and t.is_floating_point():
                half = t.half()
                if not torch.isfinite(half).all() and torch.isfinite(t).all():
                    raise WeightsError(f"{src}: {m}.{key} has values beyond the fp16 range; add it without --fp16.")
                t = half
            flat[f"{m}.{key}"] = t
    if CONFIGS_DIR / cfg_path.name == cfg_path:
        config_name = cfg_path.name
    else:  # keep the custom YAML with the weights so resolve_fomm_weights can find it
        config_name = f"{name}.yaml"
        shutil.copyfile(cfg_path, d / config_name)
    dtype = "float16" if fp16 else "float32"
    from safetensors.torch import save_file

    tmp = final.with_name(final.name + ".part")
    save_file(flat, str(tmp), metadata={"format": "avatarcam-fomm", "config": config_name, "dtype": dtype,
                                        "source_sha256": source_sha})
    os.replace(tmp, final)
    sha = file_digests(final)["sha256"]
    remember_sha256(final, sha)
    write_meta(final, kind="slim", name=name, config=config_name, dtype=dtype, sha256=sha,
               size=final.stat().st_size, source_file=str(src.resolve()), source_sha256=source_sha,
               source_size=src.stat().st_size, matches=known.name if known else None,
               added=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return final
