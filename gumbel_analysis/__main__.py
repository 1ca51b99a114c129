"""``python -m gumbel_analysis`` runs the ``gumbel`` command line."""

from gumbel_analysis.cli.app import main

main()
