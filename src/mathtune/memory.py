"""A stage's peak resident memory, from Linux's per-process high-water mark (VmHWM in /proc/self/status), reset at
the stage's start by writing 5 to /proc/self/clear_refs (Linux >= 4.0). Elsewhere, or where /proc cannot be
written, there is no figure (None) rather than the whole process's peak under a stage's name."""

from __future__ import annotations

from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new high-water mark; False where that is not possible."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_gb(field: str, pid: int | str) -> float | None:
    """A memory field of /proc/PID/status (VmHWM, VmRSS) in GB (2**30 bytes), or None where there is none."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    kb = next((int(ln.split()[1]) for ln in lines if ln.startswith(f"{field}:")), None)
    return None if kb is None else round(kb / 2**20, 2)


def peak_gb(pid: int | str = "self") -> float | None:
    """The high-water mark of resident memory in GB (2**30 bytes) of this process since the last reset_peak, or of
    process `pid` (a benchmark reading its child's); None where there is no such figure."""
    return _status_gb("VmHWM", pid)


def resident_gb(pid: int | str = "self") -> float | None:
    """Resident memory now, in GB (2**30 bytes); None where there is no such figure."""
    return _status_gb("VmRSS", pid)
