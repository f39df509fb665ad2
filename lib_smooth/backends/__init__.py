"""Model hosts implementing :class:`lib_smooth.backend.Backend` (optional extras)."""
