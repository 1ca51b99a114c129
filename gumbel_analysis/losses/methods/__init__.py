"""One file per long-tail method; the catalogue (``gumbel_analysis.spec.losses``) names each
method's class by its import path, so nothing here is imported until a loss is built."""
