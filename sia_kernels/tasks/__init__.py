"""Synthetic tasks with real junctions, for the demo and the end-to-end tests."""
from .branching import BranchingTask

__all__ = ["BranchingTask"]
