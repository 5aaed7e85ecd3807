"""Filled by the face-stack issue."""
