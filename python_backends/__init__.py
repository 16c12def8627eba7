"""Shared, server-independent logic of the Step-Audio Triton models (importable and unit-tested)."""
