"""Sandboxed Jinja2 rendering (renderer.py), its limits (sandbox.py), template files
(loader.py) and Arcion tokens (arcion.py)."""

from smagent.render.renderer import (
    COMPUTED,
    Problem,
    ReferenceProblem,
    Renderer,
    RenderOutcome,
    extract,
)

__all__ = ["COMPUTED", "Problem", "ReferenceProblem", "RenderOutcome", "Renderer", "extract"]
