"""mathtune: LoRA fine-tuning on math word problems, with an evaluation and a report you can check."""

__version__ = "0.1.0"
