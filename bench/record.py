"""What every benchmark result ends with (the command that made it, the machine, the day), and its writing."""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from pathlib import Path


def write(out: str | Path, result: dict) -> dict:
    """result + command, machine and date, written to `out` as indented JSON; returns what was written."""
    import torch

    from mathtune.run import cpu_model

    result = {
        **result,
        "command": f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "torch": torch.__version__},
        "date": date.today().isoformat(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
