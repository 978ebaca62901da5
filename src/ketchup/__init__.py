"""KETCHUP: K-step return estimation for sequential knowledge distillation (reference pipeline)."""

__version__ = "0.1.0"
