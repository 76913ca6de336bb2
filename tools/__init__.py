"""Checks and generators run from a checkout (not shipped in the wheel)."""
