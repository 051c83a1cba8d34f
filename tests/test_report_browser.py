"""report.html in a real browser: Debian's headless Chromium, driven by Playwright (no browser download).

It must load with no console error and no failed request (it is self-contained: no network), every image
must decode to a non-zero natural size, and a screenshot must come out.
"""

import json
import os
import shutil
from pathlib import Path

from mathtune.analysis.summary import analyze
from mathtune.report.build import write_report

CHROMIUM = os.environ.get("MATHTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _report(tmp_path: Path, gsm8k: Path) -> Path:
    rows = [json.loads(line) for line in (gsm8k / "test.jsonl").open()][:30]
    preds = {}
    for name, right in (("base", range(0, 30, 3)), ("finetuned", range(0, 30, 2))):
        preds[name] = [
            {
                "id": f"test-{i}",
                "question": r["question"],
                "reference": r["answer"],
                "completion": (
                    f"#### {r['answer'].split('####')[-1].strip()}"
                    if i in right
                    else "So 12 * 4 = 46 <script>console.error('injected')</script>\n#### 46"
                ),
            }
            for i, r in enumerate(rows)
        ]
    metrics = [
        {"step": s, "epoch": s / 32, "val_loss": 1.3 - 0.01 * s, "val_mean_token_accuracy": 0.7}
        for s in range(0, 33, 8)
    ]
    metrics += [
        {"step": s, "epoch": s / 32, "train_loss": 1.4 - 0.01 * s, "mean_token_accuracy": 0.67 + s / 500}
        for s in range(5, 33, 5)
    ]
    metrics.sort(key=lambda m: m["step"])
    run_info = {"environment": {"cores": 2}, "stages": {"train": {"seconds": 500.0}, "eval": {"seconds": 300.0}}}
    write_report(analyze(preds, metrics, {"steps": 32, "best_step": 32}, run_info), tmp_path)
    return tmp_path / "report.html"


def test_report_html_in_headless_chromium(tmp_path, gsm8k):
    assert CHROMIUM, "Chromium not found: `make setup` installs Debian's chromium package (or set MATHTUNE_CHROMIUM)"
    from playwright.sync_api import sync_playwright

    html = _report(tmp_path, gsm8k)
    errors, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(html.as_uri(), wait_until="load")
        sizes = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == [] and failed == []
    assert len(sizes) == 5 and all(c and w > 0 and h > 0 for c, w, h in sizes), sizes
    assert "console.error('injected')" in text  # the completion's <script> shows as text; it never ran
    assert (tmp_path / "report.png").stat().st_size > 10_000
