"""Evaluation: generate answers for the test split, extract the final number, compare exactly.

Importing this package imports nothing heavy: extract.py and stats.py are used by the torch-free analysis.
"""
