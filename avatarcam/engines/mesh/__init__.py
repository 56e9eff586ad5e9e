"""The mesh engine: photo animation from face landmarks with no downloaded weights (the default engine)."""
from avatarcam.engines.mesh.engine import MeshAvatar, MeshEngine

__all__ = ["MeshAvatar", "MeshEngine"]
