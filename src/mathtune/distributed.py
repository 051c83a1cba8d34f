"""Several processes under `accelerate launch` (DDP, FSDP): who writes, who waits, who answers which questions.

mathtune writes no distributed code of its own: accelerate's PartialState says the rank and the world size and
holds the barrier; the Trainer does DDP/FSDP. The rules here: the main process alone writes the run directory
(config, data, metrics, adapter, predictions, report); every process trains; evaluation is split across processes
and gathered by the main one. A plain `mathtune run` is one process and these are no-ops.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's PartialState (a process-wide singleton there); None in a single process, so plain runs do not
    import accelerate's distributed setup at all."""
    if not launched():
        return None
    import torch
    from accelerate import PartialState

    # cpu=True on a machine without CUDA: else PartialState sees no device to spread over and reports one process.
    # The Trainer asks for the same (TrainingArguments.use_cpu on such a machine), so the two agree.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    s = state()
    return s is None or s.is_main_process


def rank_and_world() -> tuple[int, int]:
    s = state()
    return (0, 1) if s is None else (s.process_index, s.num_processes)


def barrier() -> None:
    s = state()
    if s is not None:
        s.wait_for_everyone()


def gather(obj) -> list:
    """obj from every process, in rank order ([obj] in a single process)."""
    if not launched():
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])
