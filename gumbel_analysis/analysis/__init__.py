"""Analyses behind the supplementary material's figures, one module per figure."""
