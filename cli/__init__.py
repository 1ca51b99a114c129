"""The ``gumbel`` command line (installed as ``gumbel_analysis.cli``).

``app.py`` only wires the commands; each command is one thin module here; the work is in the
library (``gumbel_analysis``).
"""
