"""Training stage: TRL SFTTrainer + PEFT LoRA, loss on the answer tokens only, early stopping on validation loss."""
