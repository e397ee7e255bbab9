"""The screenshots in docs/REPORT.md: the main page, a run page's curve, a sweep's and a study's section.

    python bench/report_screenshots.py SITE OUT

SITE holds a report (index.html and runs/) and exactly one sweep page and one study page built beside it with
`report --sweep NAME` / `report --study NAME`; the PNGs go to OUT (report.png, report-run.png,
report-sweep.png, report-study.png), reduced to 256 colours where that keeps them under 250 KB.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

LIMIT_BYTES = 250_000


def small_png(path: Path) -> None:
    from PIL import Image

    if path.stat().st_size > LIMIT_BYTES:
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main() -> None:
    from playwright.sync_api import sync_playwright

    site, out = Path(sys.argv[1]), Path(sys.argv[2])
    pages = {p: p.read_text(encoding="utf-8") for p in site.glob("*.html") if p.name != "index.html"}
    sweep = next(p for p, text in pages.items() if '<section id="sweeps">' in text and "<h1>sweep " in text)
    study = next(p for p, text in pages.items() if '<section id="studies">' in text and "<h1>study " in text)
    run = next(p for p in sorted((site / "runs").glob("*.html")) if "baseline" in p.name)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto((site / "index.html").as_uri())
        page.screenshot(path=str(out / "report.png"))
        page.goto(run.as_uri())
        top = page.locator("h1").bounding_box()["y"]
        plots = page.locator("h2:has-text('Curve') ~ div.plots").first.bounding_box()
        page.set_viewport_size({"width": 1280, "height": int(plots["y"] + plots["height"] + 20)})
        page.screenshot(path=str(out / "report-run.png"), full_page=True,
                        clip={"x": 0, "y": top - 10, "width": 1280, "height": plots["y"] + plots["height"] - top + 20})
        page.set_viewport_size({"width": 1280, "height": 1000})
        for path, section, name in ((sweep, "sweeps", "report-sweep.png"), (study, "studies", "report-study.png")):
            page.goto(path.as_uri())
            page.locator(f"section#{section}").screenshot(path=str(out / name))
        browser.close()
    for name in ("report.png", "report-run.png", "report-sweep.png", "report-study.png"):
        small_png(out / name)


if __name__ == "__main__":
    main()
