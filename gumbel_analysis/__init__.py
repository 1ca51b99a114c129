"""gumbel-analysis: the Gumbel activation and GOL for long-tailed instance segmentation.

Modules import one way: cli -> engine / analysis -> hooks -> model -> losses -> math.
"""

__version__ = "0.1.0"
