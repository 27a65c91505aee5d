"""Reproducing the paper and checking against the authors' code: the experiment list,
results tables, Figures 2 and 3, model selection, the lockstep with the original code.
The top layer: imports everything below, nothing imports it."""
