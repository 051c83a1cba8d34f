"""Analysis: numbers from the run directory's files alone. Never imports torch or transformers."""
