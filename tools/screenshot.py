#!/usr/bin/env python
"""Screenshots of the built docs in a real headless browser: `python tools/screenshot.py [--site _site] [--out DIR]`.

Opens pages of the site built by `tools/build_docs.py` (as `file://` URLs) in headless Chromium (Debian's
`chromium` package, or Chrome) and saves one PNG per page: by default the index and the callbacks' API page,
into `<site>/screenshots/` (git-ignored with the site; the next build replaces it). It also lays each page out at
the screenshot's width and lists what runs off the right edge of the text column (a code block that has to
scroll, an element wider than the column); `--check` fails if anything does.
"""
from __future__ import annotations
import argparse, html, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

__all__ = ['find_browser', 'screenshot', 'overflow', 'main']

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

# run in the page once it is laid out: what sticks out of <main>'s right edge, or has to scroll sideways
_CHECK = """<script>window.addEventListener('load', () => {
  const main = document.querySelector('main'), edge = main.getBoundingClientRect().right + 1, bad = [];
  const name = el => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '');
  for (const el of main.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > edge) bad.push(`${name(el)} ends at ${Math.round(r.right)}px, past the column's ${Math.round(edge)}px: ${el.textContent.trim().slice(0, 60)}`);
    else if (el.tagName === 'PRE' && el.scrollWidth > el.clientWidth + 1) bad.push(`pre scrolls (${el.scrollWidth}px of text in ${el.clientWidth}px): ${el.textContent.trim().slice(0, 60)}`);
  }
  const out = document.createElement('pre'); out.id = 'overflow-check'; out.textContent = JSON.stringify(bad);
  document.body.appendChild(out);
});</script>"""

def overflow(page:Path, width:int=1280, browser:str|None=None, timeout:float=120.) -> list[str]:
    "What runs off the right edge of the text column of `page` (an HTML file of the site) at `width` px, in headless Chromium"
    browser = browser or find_browser()
    if browser is None: raise FileNotFoundError("no Chromium found: apt-get install chromium")
    page = Path(page).absolute()
    probe = page.with_name(f'_overflow_{page.name}')        # next to the page, so that its relative links work
    probe.write_text(page.read_text(encoding='utf-8').replace('</body>', _CHECK + '</body>'), encoding='utf-8')
    try:
        with tempfile.TemporaryDirectory() as profile:
            cmd = [browser, *FLAGS, f'--user-data-dir={profile}', f'--window-size={width},1000', '--virtual-time-budget=10000',
                   '--dump-dom', probe.as_uri()]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally: probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="overflow-check">(.*?)</pre>', r.stdout, flags=re.S)
    if m is None: raise RuntimeError(f"{browser} did not run the check (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--site', default='_site', help="the built site (default: _site)")
    p.add_argument('--out', default=None, help="folder for the PNGs (default: <site>/screenshots)")
    p.add_argument('--pages', nargs='+', default=['index.html', 'callback.html'], help="pages to shoot, relative to the site")
    p.add_argument('--size', default='1280x1600', help="window size WxH (default: 1280x1600)")
    p.add_argument('--check', action='store_true', help="exit 1 if anything runs off the text column at that width")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.lower().split('x'))
    bad = 0
    for pg in a.pages:
        png = Path(a.out or Path(a.site)/'screenshots')/(Path(pg).with_suffix('').as_posix().replace('/', '_') + '.png')
        screenshot(Path(a.site)/pg, png, size)
        off = overflow(Path(a.site)/pg, size[0])
        print(png, f"({len(off)} thing(s) run off the text column at {size[0]}px)" if off else '')
        for o in off: print('   ', o)
        bad += len(off)
    return 1 if a.check and bad else 0

if __name__ == '__main__': sys.exit(main())
