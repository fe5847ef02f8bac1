#!/usr/bin/env python
"""Screenshots of the built docs in a real headless browser: `python tools/screenshot.py [--site _site] [--out DIR]`.

Opens pages of the site built by `tools/build_docs.py` (as `file://` URLs) in headless Chromium (Debian's
`chromium` package, or Chrome) and saves one PNG per page: by default the index and the callbacks' API page,
into `<site>/screenshots/` (git-ignored with the site; the next build replaces it).
"""
from __future__ import annotations
import argparse, os, shutil, subprocess, sys, tempfile
from pathlib import Path

__all__ = ['find_browser', 'screenshot', 'main']

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--hide-scrollbars', '--disable-dev-shm-usage')

def find_browser() -> str|None:
    "Path of a Chromium-like browser, or `None`"
    return next((p for p in map(shutil.which, BROWSERS) if p), None)

def screenshot(page:Path, png:Path, size=(1280, 1600), browser:str|None=None, timeout:float=120.) -> Path:
    "Render `page` (an HTML file) in headless Chromium and save a `size` screenshot to `png`"
    browser = browser or find_browser()
    if browser is None: raise FileNotFoundError("no Chromium found: apt-get install chromium")
    page, png = Path(page).absolute(), Path(png).absolute()
    if not page.exists(): raise FileNotFoundError(page)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *FLAGS, f'--user-data-dir={profile}', f'--screenshot={png}',
               f'--window-size={size[0]},{size[1]}', page.as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.exists(): raise RuntimeError(f"{browser} wrote no screenshot (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return png

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--site', default='_site', help="the built site (default: _site)")
    p.add_argument('--out', default=None, help="folder for the PNGs (default: <site>/screenshots)")
    p.add_argument('--pages', nargs='+', default=['index.html', 'callback.html'], help="pages to shoot, relative to the site")
    p.add_argument('--size', default='1280x1600', help="window size WxH (default: 1280x1600)")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.lower().split('x'))
    for pg in a.pages:
        png = Path(a.out or Path(a.site)/'screenshots')/(Path(pg).with_suffix('').as_posix().replace('/', '_') + '.png')
        screenshot(Path(a.site)/pg, png, size)
        print(png)

if __name__ == '__main__': main()
