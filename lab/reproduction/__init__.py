"""The small-scale reproduction of the paper's smoothness claims (``python -m lab.reproduction.<script>``)."""
