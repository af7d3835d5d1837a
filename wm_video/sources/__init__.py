"""Game sources."""
