"""Render a gallery page (``python -m ls_video.commands.eval DIR --html``) in headless Chromium and save a screenshot.

    python benchmarks/gallery_screenshot.py outputs/demo/index.html docs/demo_gallery.png [--size 1100,900]

Uses the first of ``chromium``, ``chromium-browser``, ``google-chrome`` found on ``PATH`` (or ``--browser``);
says so in one line and exits 2 when none is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("page", help="index.html written by ls_video.commands.eval --html")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--size", default="1100,900", help="window width,height in pixels")
    p.add_argument("--browser", help="browser executable (default: the first Chromium on PATH)")
    args = p.parse_args(argv)
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print(f"gallery_screenshot: error: no Chromium found (tried {', '.join(BROWSERS)}; pass --browser)",
              file=sys.stderr)
        return 2
    if not os.path.isfile(args.page):
        print(f"gallery_screenshot: error: {args.page} not found", file=sys.stderr)
        return 2
    url = "file://" + os.path.abspath(args.page)
    cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--window-size={args.size}",
           f"--screenshot={os.path.abspath(args.out)}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"wrote {args.out} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
