"""The mesh engine: photo animation from face landmarks with no downloaded weights (the default engine)."""
from __future__ import annotations

from typing import Any

__all__ = ["MeshAvatar", "MeshEngine"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the configuration can read .options without loading the engine.
    if name in __all__:
        from avatarcam.engines.mesh import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
