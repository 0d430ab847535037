"""Provable robustness: the dual network of the convex outer adversarial polytope (Wong & Kolter).

``DualNetwork`` bounds every layer; ``robust_loss`` is the drop-in replacement for cross-entropy; ``certify``
gives the certificates (Corollaries 1 and 2); ``lp`` holds the exact LP used to check tightness.
"""

from .dual import DualNetwork
from .graph import trace_network

__all__ = ["DualNetwork", "trace_network"]
