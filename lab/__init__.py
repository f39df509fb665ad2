"""The laboratory: the embedded model's data set and recipe, and the reproduction of the paper's claims.

Not part of the installed package; run its scripts from the repository root as modules, e.g.
``python -m lab.recipe.train_shapes_model --help``.
"""
