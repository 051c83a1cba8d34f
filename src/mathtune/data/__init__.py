"""Data stage: sources (hub, jsonl, gsm_symbolic) -> validated rows -> deterministic split -> run_dir/data/."""
