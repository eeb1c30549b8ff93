"""tuners package."""
