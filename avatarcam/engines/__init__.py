"""Reenactment engines (passthrough, mesh, fomm) behind one interface.

Engines are created by name; heavy modules are imported only when their engine is chosen.
"""
from __future__ import annotations

import importlib
from typing import Any

from avatarcam.engines.base import Drive, Engine
from avatarcam.errors import EngineError

# name -> "module:Class"; imported lazily so `--engine mesh` never imports the FOMM network code.
ENGINES: dict[str, str] = {
    "passthrough": "avatarcam.engines.passthrough:PassthroughEngine",
    "mesh": "avatarcam.engines.mesh:MeshEngine",
    "fomm": "avatarcam.engines.fomm:FommEngine",
}


def engine_class(name: str) -> type[Engine]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(name: str, **options: Any) -> Engine:
    """Build engine ``name`` with keyword ``options`` (those it does not accept are an error)."""
    return engine_class(name)(**options)


__all__ = ["Drive", "Engine", "ENGINES", "create_engine", "engine_class"]
