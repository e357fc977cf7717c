"""Evaluation: reconstruction metrics, the world benchmark and reports."""
