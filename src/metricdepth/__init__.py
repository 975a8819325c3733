"""metricdepth: metric depth from one photo of any camera (Metric3D's canonical camera space)."""

from metricdepth.camera import Camera

__version__ = "0.1.0"

__all__ = ["Camera", "__version__"]
