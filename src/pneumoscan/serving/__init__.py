"""Serving: scoring files a user points at with a trained bundle."""
