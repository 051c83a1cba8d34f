"""Dollars from wall time: the price per GPU-hour of the device a stage ran on (no torch here)."""

from __future__ import annotations


def hourly_price(cost: dict, gpu: str | None, gpu_count: int | None = None) -> dict:
    """{price_per_hour (all GPUs together), per_gpu, device, matched, source, date} for a run's device.

    cost: the config's `cost` section as a dict. A flat cost.price_per_hour wins; else the table entry whose
    key is in the GPU's name (the longest, case-insensitive); a CPU run costs $0 of GPU.
    """
    n = gpu_count or 1
    out = {
        "device": gpu or "CPU",
        "gpus": n if gpu else 0,
        "source": cost.get("price_source", ""),
        "date": cost.get("price_date", ""),
        "matched": None,
    }
    if cost.get("price_per_hour") is not None:
        per_gpu = float(cost["price_per_hour"])
        out.update(matched="cost.price_per_hour", source="set in the config", date="")
    elif not gpu:
        per_gpu = 0.0
        out.update(matched="cpu", source="a CPU run: no GPU rented", date="")
    else:
        keys = [k for k in cost.get("prices", {}) if k.lower() in gpu.lower()]
        key = max(keys, key=len) if keys else None
        per_gpu = float(cost["prices"][key]) if key else 0.0
        out["matched"] = key
        if key is None:
            out["source"] = f"no price for {gpu!r} in cost.prices: set cost.price_per_hour"
    out["per_gpu"] = per_gpu
    out["price_per_hour"] = per_gpu * (n if gpu else 1)
    return out
