"""crosstrace: cross-task gradient traces of two-stage vs mixed training on a bioS-style world."""

from crosstrace.world import load_world

__all__ = ["load_world"]
__version__ = "0.1.0"
