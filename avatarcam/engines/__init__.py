"""Reenactment engines (passthrough, mesh, fomm) behind one interface."""
