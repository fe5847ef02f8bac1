#!/usr/bin/env python
"""Run `nbdev-proc-nbs` (nbdev's processing of the notebooks for the docs, what `nbdev-docs` runs before Quarto) as
a check: `python tools/proc_nbs.py [--pending NB ...]`.

nbdev runs, for `show_doc`, the exported cells of each documented notebook and every cell with an import; a cell
that mixes imports with other code is run whole, and nbdev warns "Found cells containing imports and other code"
(its FAQ: imports go in cells of their own). This check fails if `nbdev-proc-nbs` fails (a cell it runs raised)
or warns so; each warning is traced to its notebook and cell. A notebook named with `--pending` (its cells are
still to be split) has its warnings reported without failing, and fails the check once it has none, so that it
leaves the list. `nbdev-proc-nbs` writes `_proc/` and `nbs/sidebar.yml` (both git-ignored).

nbdev-proc-nbs needs no Quarto, but where Quarto is missing nbdev tries to install it (with sudo, from the
internet): a stub `quarto` on PATH, for this command only, stops that. No Quarto is run.
"""
from __future__ import annotations
import argparse, ast, json, os, re, shutil, stat, subprocess, sys, tempfile
from pathlib import Path

__all__ = ['WARNING', 'warned_cells', 'find_cell', 'main']

ROOT = Path(__file__).resolve().parent.parent
WARNING = 'Found cells containing imports and other code'
_re_warn = re.compile(re.escape(WARNING) + r'\. See FAQ\.\n---\n(.*?)\n---\n', re.S)

def warned_cells(output:str) -> list[str]:
    "The source of each cell that nbdev's output warns about"
    return _re_warn.findall(output)

def _code(src:str) -> str:
    "A cell's code without its `#|` directives, as nbdev shows it"
    return '\n'.join(l for l in src.splitlines() if not re.match(r'\s*#\|', l)).strip()

def find_cell(src:str, nbs:list[Path]) -> tuple[Path, int]|None:
    "The notebook and cell (0-based, all cells counted) whose code is `src`"
    for nb in nbs:
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        for i, c in enumerate(cells):
            if c['cell_type'] == 'code' and _code(''.join(c['source'])) == _code(src): return nb, i
    return None

def _stub_quarto(d:Path) -> Path:
    q = d/'quarto'
    q.write_text('#!/bin/sh\necho "quarto: not installed (stub of tools/proc_nbs.py)" >&2\nexit 1\n')
    q.chmod(q.stat().st_mode | stat.S_IEXEC)
    return d

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--pending', nargs='*', default=[], help="notebooks (file names) whose warnings are reported, not failed on")
    p.add_argument('--n-workers', type=int, default=1, help="nbdev-proc-nbs workers (default 1)")
    a = p.parse_args(argv)
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    nbs = [Path(f) for f in nbglob(get_config().nbs_path)]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as d:
        if shutil.which('quarto') is None: env['PATH'] = f"{_stub_quarto(Path(d))}{os.pathsep}{env.get('PATH', '')}"
        cmd = ['nbdev-proc-nbs', '--n-workers', str(a.n_workers), '--force']
        print('$', ' '.join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        print(out[-6000:], file=sys.stderr)
        print(f"nbdev-proc-nbs failed (exit {r.returncode}): a cell it runs for show_doc raised (above)", file=sys.stderr)
        return 1
    fail, warned = 0, set()
    for src in warned_cells(out):
        where = find_cell(src, nbs)
        name = where[0].name if where else None
        warned.add(name)
        loc = f"{where[0].relative_to(ROOT)}, cell {where[1]}" if where else 'a cell not found in the notebooks'
        pending = name in a.pending
        print(f"{'pending' if pending else 'error'}: {loc}: imports and other code in one cell (nbdev runs it whole): "
              f"put the imports in a cell of their own\n    {src.splitlines()[0]} ...", file=sys.stderr)
        fail |= not pending
    for name in sorted(set(a.pending) - warned):
        print(f"error: {name} has no such cell any more: take it off --pending (.ci/run)", file=sys.stderr); fail = 1
    print(f"nbdev-proc-nbs: {len(nbs)} notebooks processed into _proc/, "
          f"{'FAILED' if fail else 'no cell mixing imports with other code' + (' but the pending ones' if warned else '')}")
    return int(fail)

if __name__ == '__main__': sys.exit(main())
