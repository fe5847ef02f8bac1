#!/usr/bin/env python
"""Build the documentation as a static HTML site, offline and without Quarto: `python tools/build_docs.py [--out _site]`.

The pages come from the same notebooks and the same nbdev processing as `nbdev-docs` (frontmatter from the
first markdown cell, a `show_doc` for every exported function and class, directives, hidden cells), but the
processed notebooks are rendered by nbconvert's HTML exporter instead of Quarto. The site has `index.html`
(from `nbs/index.ipynb`), one page per module notebook (`core.html`, `callback.html`, ...) and one per
example (`examples/quickstart.html`, ...), named as nbdev names them, a sidebar linking all pages, a table
of contents per page, output images embedded, `.ipynb` links rewritten to the pages, the files the pages
link to copied (for `index.ipynb`, whose text is also the README's, from the repository's root if not next
to it), and every backticked public name linked to its documentation.

What runs: what nbdev runs for `show_doc` (the imports and exported cells of module notebooks), and every notebook
saved without outputs (the module notebooks), in a shell of its own, as nbdev-test runs it (cells flagged with
`tst_flags` or `eval: false` left out), so that its page shows what its cells print and draw; a notebook saved with
outputs (the examples) is shown as saved. Signatures show the types the source declares (fastcore would show a
type guessed from the default: `seed:NoneType=None`), unions as written (`int|None`). Long lines of code and
output wrap, continuing indented, instead of running off the page.
"""
from __future__ import annotations
import argparse, ast, contextlib, html, json, os, re, shutil, sys, time, warnings
from pathlib import Path
from urllib.parse import unquote

import yaml
from fastcore.nbio import read_nb
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.process import NBProcessor, mk_cell
from nbdev import processors as P

__all__ = ['pages', 'declared_types', 'execute_nb', 'process_nb', 'wrap_lines', 'render_page', 'build', 'main']

# --- which notebooks, in which order ------------------------------------------------------------------------

def pages(nbs_path:Path) -> list[Path]:
    "Notebooks to document, as nbdev finds them: `index.ipynb` first, then the top folder, then each subfolder"
    files = [Path(f) for f in nbglob(nbs_path)]
    def key(p:Path):
        rel = p.relative_to(nbs_path)
        return (len(rel.parts) > 1, rel.parts[:-1], rel.name != 'index.ipynb', rel.name)
    return sorted(files, key=key)

# --- nbdev's processing, without Quarto ---------------------------------------------------------------------

class add_show_docs(P.add_show_docs):
    "nbdev's `add_show_docs`, keeping the names of a cell in source order"
    def begin(self):
        nb = self.nb
        exports = [c for c in nb.cells if P._want_doc(c)]
        trees = P.L(nb.cells).map(P.NbCell.parsed_).concat()
        shown = {P._get_nm(t) for t in P._show_docs(trees)}
        for cell in reversed(exports):
            for nm in reversed(P._def_names(cell, shown)):
                new = mk_cell(f'show_doc({nm})'); new.has_sd = True
                nb.cells.insert(cell.idx_ + 1, new)
        nb.has_docs_ = shown or exports

_SHELL = None
class exec_show_docs(P.exec_show_docs):
    "nbdev's `exec_show_docs`, with one shell shared by all notebooks of a build (fastai is imported once)"
    def begin(self):
        global _SHELL
        if P.nb_lang(self.nb) != 'python': return
        if _SHELL is None:
            _SHELL = P.CaptureShell()
            _SHELL.run_cell('from nbdev.showdoc import show_doc')
        self.k = _SHELL
    def __call__(self, cell):
        if not self.nb.has_docs_ or not hasattr(self, 'k'): return
        if str(getattr(self.nb, 'frontmatter_', {}).get('skip_showdoc', False)).lower() == 'true': return
        if not P._do_eval(cell): return
        where = f"{Path(self.nb.path_).name}, cell {cell.idx_}"
        src = _imports_only(cell)
        if src is not None:                      # imports and other code: nbdev runs it all, here only the imports
            _warn(f"{where} has imports and other code: nbdev-docs runs all of it for show_doc (nbdev's FAQ: "
                  "put the imports in a cell of their own); here only its imports ran")
            self.k.run_cell(src)
        else: self.k.cell(cell)
        if (e := self.k.exc) is None: return
        self.k.exc = None
        _warn(f"{where}: {type(e).__name__}: {e} (nbdev-docs would fail here)", e)
    def end(self): pass                          # (nbdev saves ipywidgets state here: none in these docs)

def _imports_only(cell) -> str|None:
    "The top-level imports of a cell that has other code too (`None` if it has only imports, definitions or show_doc)"
    if cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: return None
    try: tree = ast.parse(cell.source)
    except SyntaxError: return None
    imps = [t for t in tree.body if isinstance(t, (ast.Import, ast.ImportFrom))]
    if not imps or len(imps) == len(tree.body): return None
    return '\n'.join(ast.unparse(t) for t in imps)

def _warn(msg:str, e:Exception|None=None):
    "A problem nbdev-docs would report: an error with `strict`, else a warning"
    if STRICT: raise RuntimeError(msg) from e
    WARNINGS.append(msg); print(f"warning: {msg}", file=sys.stderr, flush=True)

STRICT, WARNINGS = False, []

def _procs():
    "nbdev's default processors, with the two above, and without `add_links` (links are made here, relative)"
    subs = {'add_show_docs': add_show_docs, 'exec_show_docs': exec_show_docs}
    return [subs.get(p.__name__, p) for p in P.FilterDefaults().base_procs() if p.__name__ != 'add_links']

@contextlib.contextmanager
def declared_types():
    "While it lasts, `show_doc` signatures show the annotations the source declares, unions written `int|None`"
    import fastcore.docments as fd
    get_full, type_str = fd._get_full, fd._type_str
    def _get_full(p, docs, eval_str=False):             # fastcore's, without `anno = type(p.default)`
        return fd.AttrDict(docment=docs.get(p.name), anno=p.annotation, default=p.default, kind=p.kind)
    fd._get_full, fd._type_str = _get_full, lambda anno: type_str(anno).replace(' | ', '|')
    try: yield
    finally: fd._get_full, fd._type_str = get_full, type_str

def _has_outputs(nb) -> bool: return any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')

def execute_nb(path:Path, nb):
    "Run `nb` (read from `path`) as nbdev-test does, in a shell of its own, filling in its cells' outputs"
    from execnb.shell import CaptureShell
    from nbdev.test import _skip_cell
    run = NBProcessor(path, rm_directives=False, process=True).nb       # as nbdev-test reads it (directives parsed)
    k, prev = CaptureShell(path), os.environ.get('IN_TEST')
    os.environ['IN_TEST'] = '1'
    try:
        with working_directory(path.parent):
            k.run_all(run, exc_stop=True, preproc=_skip_cell(run, get_config().tst_flags.split()))
    except Exception as e: _warn(f"{path.name}: a cell failed while running it for its outputs: {type(e).__name__}: {e}", e)
    finally:
        if prev is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = prev
    for c, r in zip(nb.cells, run.cells):
        if c.cell_type == 'code': c['outputs'] = [_as_read(o) for o in r.get('outputs', [])]

def _as_read(o:dict):
    "An output as `read_nb` gives it: multi-line strings joined, attribute access"
    from fastcore.xtras import dict2obj
    j = lambda v: ''.join(v) if isinstance(v, list) else v
    o = {k: j(v) for k, v in dict(o).items()}
    if 'data' in o: o['data'] = {k: j(v) for k, v in dict(o['data']).items()}
    return dict2obj(o)

def process_nb(path:Path, execute:bool=True):
    "The notebook at `path` (run first if `execute` and it has no saved outputs) after nbdev's doc processing, and its frontmatter"
    nb = read_nb(path)
    if execute and not _has_outputs(nb): execute_nb(path, nb)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')             # nbdev's "imports and other code in one cell" FAQ warning
        NBProcessor(nb=nb, procs=_procs(), rm_directives='quarto').process()
    fm = {}
    if nb.cells and nb.cells[0].cell_type == 'raw' and nb.cells[0].source.lstrip().startswith('---'):
        fm = yaml.safe_load(nb.cells[0].source.strip().strip('-')) or {}
        nb.cells.pop(0)
    return nb, fm

# --- one processed notebook to HTML -------------------------------------------------------------------------

_re_dir = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def _directives(cell) -> dict:
    "Quarto directives left in a code cell (removed from its source)"
    d, keep = {}, []
    for line in cell.source.splitlines():
        m = _re_dir.match(line)
        if m and not keep: d[m.group(1)] = m.group(2).strip('"\'').lower()
        else: keep.append(line)
    cell.source = '\n'.join(keep)
    return d

def _fenced_divs(src:str) -> str:
    "Quarto fenced divs (`::: {.callout-note}` ... `:::`) as HTML divs"
    def opener(m):
        classes = ' '.join(c.lstrip('.') for c in re.findall(r'\.[\w-]+', m.group(1) or ''))
        return f'\n<div class="{classes}">\n'
    src = re.sub(r'^:::+\s*(\{[^}]*\}|[\w-]+)\s*$', lambda m: opener(m) if m.group(1).startswith('{') else f'\n<div class="{m.group(1)}">\n', src, flags=re.M)
    return re.sub(r'^:::+\s*$', '\n</div>\n', src, flags=re.M)

def _fix_cr(text:str) -> str:
    "Stream text as a terminal (and Jupyter) shows it: text after a `\\r` overwrites its line (progress bars), blank runs squeezed"
    lines = []
    for line in re.sub(r'\r+\n', '\n', text).split('\n'):
        cur = ''
        for part in line.split('\r'): cur = part + cur[len(part):]
        lines.append(cur.rstrip())
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines))

def _prepare(nb):
    "Apply the directives Quarto would (echo, output, include) and strip what HTML cannot show"
    import nbformat
    cells = []
    for c in nb.cells:
        if c.cell_type == 'markdown':
            if not c.source.strip() or c.source.strip().startswith('<!-- WARNING'): continue
            c.source = _fenced_divs(c.source)
        elif c.cell_type == 'code':
            d = _directives(c)
            if d.get('include') == 'false' or (not c.source.strip() and not c.get('outputs')): continue
            tags = set()
            if d.get('echo') == 'false': tags.add('remove_input')
            if d.get('output') == 'false': c['outputs'] = []
            c['metadata'] = {'tags': sorted(tags)}
            for o in c.get('outputs', []):
                if o.get('output_type') == 'stream': o['text'] = '' if o.get('name') == 'stderr' else _fix_cr(o.get('text', ''))
            c['outputs'] = [o for o in c.get('outputs', []) if not (o.get('output_type') == 'stream' and not o.get('text'))]
        elif c.cell_type == 'raw': continue
        cells.append(c)
    keys = ('cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments')
    nb.cells = [{k: c[k] for k in keys if k in c} for c in cells]   # nbdev's private fields (`idx_`, ...) out
    d = {k: v for k, v in dict(nb).items() if not k.endswith('_')}
    d.update(nbformat=4, nbformat_minor=max(d.get('nbformat_minor', 5), 5))
    return nbformat.reads(json.dumps(d), as_version=4)                 # joins multi-line strings, as from a file

def _slug(text:str) -> str:
    "Pandoc's (Quarto's) automatic identifier of a heading"
    s = re.sub(r'<[^>]+>', '', html.unescape(text)).strip().lower()
    s = re.sub(r'[^\w\s.-]', '', s)
    s = re.sub(r'\s+', '-', s)
    s = re.sub(r'^[^a-z_]+', '', s)
    return s or 'section'

def _fix_headings(body:str) -> tuple[str, list]:
    "Give headings Quarto's ids (so nbdev's `_modidx` anchors work); return the body and its (level, id, text) list"
    seen, toc = {}, []
    def repl(m):
        lvl, inner = m.group(1), m.group(3)
        inner = re.sub(r'<a class="anchor-link"[^>]*>.*?</a>', '', inner, flags=re.S)
        sid = _slug(inner)
        n = seen.get(sid, 0); seen[sid] = n + 1
        if n: sid = f'{sid}-{n}'
        toc.append((int(lvl), sid, re.sub(r'<[^>]+>', '', inner).strip()))
        return f'<h{lvl} id="{sid}">{inner}<a class="anchor-link" href="#{sid}">¶</a></h{lvl}>'
    body = re.sub(r'<h([1-6])(\s+id="[^"]*")?>(.*?)</h\1>', repl, body, flags=re.S)
    return body, toc

_re_tag = re.compile(r'(<[^>]+>)')
def _tag_name(t:str) -> str: return re.match(r'<(\w+)', t).group(1)

def wrap_lines(pre:str) -> str:
    "The HTML inside a `<pre>`, one `<span class=\"line\">` per line (indent in `--i`), spans closed and reopened across lines"
    out, open_, line = [], [], []
    def end():
        text = html.unescape(re.sub(r'<[^>]+>', '', ''.join(line)))
        ind = len(text) - len(text.lstrip(' '))
        close = ''.join(f'</{_tag_name(t)}>' for t in reversed(open_))
        out.append(f'<span class="line" style="--i:{ind}">{"".join(line)}{close}</span>')
    for part in _re_tag.split(pre):
        if part.startswith('<'):
            if part.startswith('</'): open_.pop() if open_ else None
            elif not part.endswith('/>'): open_.append(part)
            line.append(part); continue
        for i, chunk in enumerate(part.split('\n')):
            if i:
                end(); line = list(open_)
            line.append(chunk)
    if ''.join(re.sub(r'<[^>]+>', '', x) for x in line): end()
    return ''.join(out)

def _wrap_pres(body:str) -> str:
    "Every `<pre>` of a page, line by line (see `wrap_lines`): with the CSS, long lines wrap, continuing indented"
    return re.sub(r'(<pre\b[^>]*>)(.*?)(</pre>)', lambda m: m.group(1) + wrap_lines(m.group(2)) + m.group(3), body, flags=re.S)

def render_page(nb, exporter) -> tuple[str, list]:
    "HTML body of a processed notebook, and its headings"
    body, _ = exporter.from_notebook_node(_prepare(nb))
    return _fix_headings(_wrap_pres(body))

# --- links --------------------------------------------------------------------------------------------------

def _symbols(lib:str, known_ids:dict) -> dict:
    "Public names of the library (`MixUp`, `Learner.mixup`, `learn.mixup`, `core.sample_mix`, ...) → site-relative URL"
    try:
        import importlib
        d = importlib.import_module(f'{lib}._modidx').d
    except Exception: return {}
    out = {}
    for mod, syms in d['syms'].items():
        for full, (url, _) in syms.items():
            name = full[len(mod) + 1:]
            if any(p.startswith('_') for p in name.split('.')): continue
            page, _, anchor = url.partition('#')
            if anchor not in known_ids.get(page, ()): continue       # only names that have a section
            for k in {name, full, f"{mod.split('.')[-1]}.{name}", f"{mod}.{name}"}: out.setdefault(k, url)
            if name.startswith('Learner.'): out.setdefault('learn.' + name[len('Learner.'):], url)
    return out

def _linkify(body:str, syms:dict, here:str) -> str:
    "Link inline `code` naming a documented symbol, outside code blocks, links and headings"
    parts = re.split(r'(<pre\b.*?</pre>|<a\b.*?</a>|<h[1-6]\b.*?</h[1-6]>)', body, flags=re.S)
    def repl(m):
        name = re.sub(r'\(.*\)$', '', html.unescape(m.group(1)).strip())
        url = syms.get(name)
        if url is None: return m.group(0)
        page, _, anchor = url.partition('#')
        href = ('' if page == here else os.path.relpath(page, os.path.dirname(here) or '.')) + '#' + anchor
        return f'<a href="{html.escape(href)}" class="symbol">{m.group(0)}</a>'
    for i in range(0, len(parts), 2): parts[i] = re.sub(r'<code>([^<]{1,80})</code>', repl, parts[i])
    return ''.join(parts)

def _fix_nb_links(body:str, src_rel:Path, page_of:dict, here:str) -> str:
    "Rewrite relative links to `.ipynb` files into links to their pages"
    def repl(m):
        target, anchor = m.group(2), m.group(3) or ''
        rel = Path(os.path.normpath(src_rel.parent / target)).as_posix()
        page = page_of.get(rel)
        if page is None: return m.group(0)
        return f'{m.group(1)}"{os.path.relpath(page, os.path.dirname(here) or ".")}{anchor}"'
    return re.sub(r'(href=)"(?![a-z]+:|/|#)([^"#]+\.ipynb)(#[^"]*)?"', repl, body)

# --- the page template --------------------------------------------------------------------------------------

CSS = """
:root { --fg:#212529; --muted:#6c757d; --accent:#2780e3; --border:#dee2e6; --code:#f7f7f9; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
header.top { background: var(--accent); color: #fff; padding: .6rem 1.2rem; font-weight: 600; font-size: 1.1rem; position: sticky; top: 0; z-index: 2; }
header.top a { color: #fff; }
.layout { display: grid; grid-template-columns: 220px minmax(0, 1fr) 200px; gap: 1.5rem; max-width: 1440px; margin: 0 auto; padding: 0 1rem 0 0; }
nav.sidebar, nav.toc { position: sticky; top: 3rem; align-self: start; max-height: calc(100vh - 3rem); overflow-y: auto; padding: 1.2rem 0 1rem 1rem; font-size: .92rem; }
nav.sidebar .group { margin: 1rem 0 .3rem; color: var(--muted); font-size: .78rem; text-transform: uppercase; letter-spacing: .05em; font-weight: 600; }
nav.sidebar a, nav.toc a { display: block; padding: .18rem .5rem; color: var(--fg); border-left: 2px solid transparent; }
nav.sidebar a.active { color: var(--accent); border-left-color: var(--accent); font-weight: 600; }
nav.toc { padding-left: 0; } nav.toc .title { font-weight: 600; margin-bottom: .3rem; }
nav.toc a.l3 { padding-left: 1.2rem; font-size: .85rem; }
main { padding: 1.2rem 0 4rem; min-width: 0; }
main > h1.title { margin: .4rem 0 .2rem; font-size: 2.2rem; }
p.description { color: var(--muted); font-size: 1.15rem; margin-top: 0; }
h2 { border-bottom: 1px solid var(--border); padding-bottom: .25rem; margin-top: 2.2rem; }
h3 { margin-top: 1.8rem; }
.anchor-link { visibility: hidden; margin-left: .3rem; font-size: .8em; } h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
code { background: var(--code); padding: .1em .3em; border-radius: 3px; font-size: .88em; color: #9753b8; }
a code { color: var(--accent); }
pre { background: var(--code); padding: .7rem .9rem; border-radius: 4px; overflow-x: auto; font-size: .85rem; line-height: 1.4; }
/* long lines (signatures with their parameter comments, code, output) wrap, continuing 4 columns past the line's indent */
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
pre .line { display: block; padding-left: calc((var(--i, 0) + 4) * 1ch); text-indent: calc((var(--i, 0) + 4) * -1ch); min-height: 1.4em; }
pre code { background: none; padding: 0; color: inherit; }
.input_area pre { border-left: 3px solid var(--accent); }
.output_area pre { background: #fff; border: 1px solid var(--border); }
main img { max-width: 100%; height: auto; }
.output_area table, .text_cell_render table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
.output_area table { display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid var(--border); padding: .3rem .6rem; text-align: left; vertical-align: top; }
thead th { background: #f1f3f5; }
.cell { margin: .6rem 0; }
.output_subarea .rendered_html hr, .text_cell_render hr { border: 0; border-top: 1px solid var(--border); margin: 2rem 0 .5rem; }
blockquote { margin: .5rem 0; padding: .1rem 1rem; border-left: 4px solid var(--border); color: #495057; }
.callout-note, .callout-tip, .callout-warning, .callout-important, .callout-caution { border-left: 4px solid var(--accent); background: #f4f8fd; padding: .4rem 1rem; margin: 1rem 0; }
.callout-warning, .callout-caution, .callout-important { border-left-color: #ff7518; background: #fff7f0; }
progress { display: none; }
footer { color: var(--muted); font-size: .8rem; margin-top: 3rem; }
@media (max-width: 1100px) { .layout { grid-template-columns: 200px minmax(0, 1fr); } nav.toc { display: none; } }
"""

def _inline(text:str) -> str:
    "Escaped text with `code` spans, for titles and descriptions"
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(text))

def _page(title, description, body, sidebar, toc, here, site_title, css_files):
    up = os.path.relpath('.', os.path.dirname(here) or '.')
    rel = lambda p: p if up == '.' else f'{up}/{p}'
    links = ''.join(f'<link rel="stylesheet" href="{rel(c)}">' for c in css_files)
    toc_html = ''.join(f'<a class="l{l}" href="#{i}">{html.escape(t)}</a>' for l, i, t in toc if l in (2, 3))
    desc = f'<p class="description">{_inline(description)}</p>' if description else ''
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title.replace('`', ''))} – {html.escape(site_title)}</title>{links}</head>
<body><header class="top"><a href="{rel('index.html')}">{html.escape(site_title)}</a></header>
<div class="layout"><nav class="sidebar">{sidebar}</nav>
<main><h1 class="title">{_inline(title)}</h1>{desc}
{body}
<footer>Built from <code>{html.escape(here.replace('.html', ''))}</code>'s notebook with <code>tools/build_docs.py</code> (nbdev processing, nbconvert rendering).</footer></main>
<nav class="toc">{'<div class="title">On this page</div>' + toc_html if toc_html else ''}</nav></div></body></html>
"""

def _sidebar(entries, here):
    "Links to every page, grouped by folder, the current page marked"
    out, group = [], None
    for page, title, grp in entries:
        if grp != group:
            group = grp
            if grp: out.append(f'<div class="group">{html.escape(grp)}</div>')
        href = os.path.relpath(page, os.path.dirname(here) or '.')
        out.append(f'<a href="{href}"{" class=active" if page == here else ""}>{_inline(title)}</a>')
    return '\n'.join(out)

_re_ref = re.compile(r'(?:href|src)="(?![a-z][a-z0-9+.-]*:|/|#)([^"#?]+)')

def _copy_linked(out:Path, page:str, src_dir:Path, root:Path|None=None, max_bytes:int=20_000_000):
    "Copy the files and folders `page` links to (relative links) from its notebook's folder, else from `root`"
    for ref in dict.fromkeys(unquote(html.unescape(m)) for m in _re_ref.findall((out/page).read_text(encoding='utf-8'))):
        dest = Path(os.path.normpath(out/Path(page).parent/ref))
        if dest.exists() or not dest.is_relative_to(out): continue
        for base in [src_dir] + ([root] if root else []):
            src = Path(os.path.normpath(base/ref))
            if not src.exists() or src.name.startswith(('.', '_')): continue
            files = [src] if src.is_file() else [f for f in src.rglob('*') if f.is_file()]
            if sum(f.stat().st_size for f in files) > max_bytes: _warn(f"{page}: {ref} is over {max_bytes:,} bytes, not copied"); break
            for f in files:
                d = dest if f == src else dest/f.relative_to(src)
                d.parent.mkdir(parents=True, exist_ok=True); shutil.copy(f, d)
            break

# --- the build ----------------------------------------------------------------------------------------------

def build(out:str|Path='_site', quiet:bool=False, strict:bool=False, execute:bool=True) -> Path:
    "Build the site into `out` (replaced); return its path. `strict`: fail where nbdev-docs would fail; `execute`: run notebooks saved without outputs"
    global STRICT
    STRICT = strict; WARNINGS.clear()
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter
    t0 = time.perf_counter()
    cfg = get_config()
    nbs, out = Path(cfg.nbs_path), Path(out).absolute()
    os.chdir(cfg.config_path)                       # nbdev's processors read the config from the working directory
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    from traitlets.config import Config
    c = Config(); c.TagRemovePreprocessor.enabled = True; c.TagRemovePreprocessor.remove_input_tags = ('remove_input',)
    exporter = HTMLExporter(config=c, template_name='basic', exclude_input_prompt=True, exclude_output_prompt=True)

    docs = []                                       # (source rel path, page rel path, title, group, nb, description)
    for f in pages(nbs):
        rel = f.relative_to(nbs)
        t = time.perf_counter(), time.process_time()
        with declared_types(): nb, fm = process_nb(f, execute)
        if not quiet: print(f"processed {rel} ({time.perf_counter() - t[0]:.1f}s, {time.process_time() - t[1]:.1f}s CPU)", flush=True)
        page = (rel.parent / fm.get('output-file', rel.with_suffix('.html').name)).as_posix()
        group = 'API' if len(rel.parts) == 1 and rel.name != 'index.ipynb' else ' '.join(rel.parts[:-1]).replace('_', ' ').title()
        docs.append((rel, page, fm.get('title', rel.stem), group, nb, fm.get('description', '')))
    page_of = {rel.as_posix(): page for rel, page, *_ in docs}
    entries = [(page, 'Home' if page == 'index.html' else title, grp) for _, page, title, grp, *_ in docs]

    rendered = {}
    for rel, page, title, group, nb, desc in docs:
        body, toc = render_page(nb, exporter)
        rendered[page] = (rel, title, desc, _fix_nb_links(body, rel, page_of, page), toc)
    ids = {page: {i for _, i, _ in toc} for page, (*_, toc) in rendered.items()}
    syms = _symbols(Path(cfg.lib_path).name, ids)

    css = ['site.css', 'pygments.css'] + (['styles.css'] if (nbs/'styles.css').exists() else [])
    (out/'site.css').write_text(CSS)
    (out/'pygments.css').write_text(HtmlFormatter(style='default').get_style_defs('.highlight'))
    if (nbs/'styles.css').exists(): shutil.copy(nbs/'styles.css', out/'styles.css')
    site_title = cfg.get('title', cfg.lib_name)
    for page, (rel, title, desc, body, toc) in rendered.items():
        html_ = _page(title, desc, _linkify(body, syms, page), _sidebar(entries, page), toc, page, site_title, css)
        (out/page).parent.mkdir(parents=True, exist_ok=True)
        (out/page).write_text(html_, encoding='utf-8')
    for page, (rel, *_) in rendered.items():       # images and other files the pages link to
        _copy_linked(out, page, nbs/rel.parent, Path(cfg.config_path) if rel.as_posix() == 'index.ipynb' else None)
    if not quiet: print(f"{len(rendered)} pages in {out} ({time.perf_counter() - t0:.1f}s): open {out/'index.html'}")
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='_site', help="output folder, replaced (default: _site, git-ignored)")
    p.add_argument('--quiet', action='store_true', help="print nothing but errors")
    p.add_argument('--strict', action='store_true', help="fail on a cell that nbdev-docs would fail on (default: warn, go on)")
    p.add_argument('--no-exec', action='store_true', help="don't run the notebooks saved without outputs (their pages show no outputs)")
    a = p.parse_args(argv)
    build(Path(a.out).absolute(), a.quiet, a.strict, not a.no_exec)
    if WARNINGS: print(f"{len(WARNINGS)} warning(s) above: cells nbdev-docs would run in full, or fail on (--strict makes them errors)", file=sys.stderr)

if __name__ == '__main__': main()
