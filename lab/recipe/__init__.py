"""How the embedded shapes-sd1 model is trained and checked (``python -m lab.recipe.<script>``)."""
