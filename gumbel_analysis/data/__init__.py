"""Datasets in the LVIS v1 format: reading and validation, the synthetic dataset, sampling."""
