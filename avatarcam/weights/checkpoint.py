"""Safe reading of FOMM checkpoints: the public ``.pth.tar`` container or our slim ``.safetensors``.

Never unpickles arbitrary objects: ``torch.load(..., weights_only=True)`` with no fallback.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from avatarcam.errors import WeightsError

MODULES = ("kp_detector", "generator")


def looks_like_html(head: bytes) -> bool:
    """True when the first bytes of a file or HTTP body are a web page or an XML error document."""
    return head[:512].lstrip().lower().startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(512))


def read_fomm_state(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Return ``{"kp_detector": state_dict, "generator": state_dict}`` from a checkpoint file.

    Accepts the public container (a ``torch.save``d dict whose ``generator`` and ``kp_detector``
    entries are state dicts) and the slim safetensors copy written by ``avatarcam weights add``
    (keys prefixed ``kp_detector.`` / ``generator.``). Raises :class:`WeightsError` with a fix
    for missing, HTML, truncated, or foreign files.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}. Run `avatarcam weights list` to see what is installed.")
    if path.stat().st_size == 0:
        raise WeightsError(f"checkpoint {path} is empty (an interrupted download?). Delete it and download again.")
    if _looks_like_html(path):
        raise WeightsError(
            f"{path} is an HTML page, not a checkpoint: the download link returned a web page "
            "(quota, login or a moved file). Delete it and use `avatarcam weights download NAME` or "
            "download it in a browser and `avatarcam weights add PATH`."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            flat = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc}).") from exc
        state: dict[str, dict[str, torch.Tensor]] = {m: {} for m in MODULES}
        for key, tensor in flat.items():
            module, _, rest = key.partition(".")
            if module not in state or not rest:
                raise WeightsError(f"{path}: unexpected tensor {key!r}; expected keys starting with {MODULES}.")
            # `weights add --fp16` stores half floats to halve the file; the model contract is fp32.
            state[module][rest] = tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise WeightsError(
                f"{path} cannot be read safely as a checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "It may be truncated or not a FOMM checkpoint; download it again."
            ) from exc
        if not isinstance(raw, dict):
            raise WeightsError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict.")
        state = {}
        for m in MODULES:
            sd = raw.get(m)
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise WeightsError(
                    f"{path} is not a FOMM checkpoint: it has no {m!r} state dict (top-level keys: {sorted(raw)[:8]})."
                )
            state[m] = dict(sd)
    for m in MODULES:
        if not state[m]:
            raise WeightsError(f"{path} has an empty {m!r} state dict.")
    return state
