"""Pruning algorithms composed from pure pieces."""
