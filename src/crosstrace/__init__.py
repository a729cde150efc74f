"""crosstrace: cross-task gradient traces of two-stage vs mixed training on a bioS-style world."""

__version__ = "0.1.0"
