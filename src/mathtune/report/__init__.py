"""Report: renders analysis.json; never imports torch or transformers."""
