"""The docs: tools/readme.py renders nbs/index.ipynb as nbdev-readme would; the offline HTML site builds with
every page, link, anchor and image in place and a section for every public name, signatures with the types the
source declares, long lines wrapped; Quarto's config matches nbdev's; a real browser renders the site and nothing
runs off the text column at 1280 px (only where Chromium is installed); tools/proc_nbs.py (CI's nbdev-proc-nbs check)
traces nbdev's warnings to their cells.

The site is built once per run. With `--runslow` (CI) the build also runs the module notebooks for their outputs
(about half a minute more), and the tests marked `slow` check those outputs; without it they are skipped."""
import importlib, importlib.util, inspect, json, re, subprocess, sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote
import pytest, yaml
from fastcore.test import test_eq as eq

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'

def _tool(name):
    "Import tools/<name>.py as a module"
    spec = importlib.util.spec_from_file_location(f'_tools_{name}', ROOT/'tools'/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

# --- tools/readme.py (README.md ↔ nbs/index.ipynb is checked by tests/test_readme.py) ------------------------

def _code(src, outputs=()): return dict(cell_type='code', source=src, metadata={}, outputs=list(outputs), execution_count=None)
def _md(src): return dict(cell_type='markdown', source=src, metadata={})
def _stream(text, name='stdout'): return dict(output_type='stream', name=name, text=text)
def _data(**data): return dict(output_type='execute_result', data={k.replace('_', '/'): v for k, v in data.items()}, metadata={}, execution_count=1)

SCRATCH = dict(nbformat=4, nbformat_minor=5, metadata={}, cells=[
    _code('#| hide\nfrom secret import *'),
    _md(['# proj\n', '\n', '> One line.']),
    _md('Some **text** with `code`.'),
    _code('#| eval: false\nx = 1\nprint(x)', [_stream('1\n'), _stream('careful\n', 'stderr')]),
    _code('#| echo: false\nshow()', [_data(text_markdown='| a |\n|---|\n| 1 |', text_plain='x')]),
    _code('#| output: false\ny = 2\ny', [_data(text_plain='2')]),
    _code('#| include: false\nhidden = 1'),
    _code('z = list(range(100))\nprint(*z, sep="\\n")', [_stream(''.join(f'{i}\n' for i in range(100)))]),
    _code('df', [_data(text_html='<style>td {x:1}</style>\n<table><tr><td>1</td></tr></table>', text_plain='   a\n0  1')]),
    _code('plot()', [_data(image_png='iVBOR', text_plain='<Figure size 640x480 with 1 Axes>')]),
    _code('obj', [_data(text_plain='<fastai.learner.Learner object at 0x7f>')]),
])

def test_readme_render():
    "Markdown verbatim; code fenced, directives out; hidden cells, stderr, long text, images and object reprs left out"
    rm = _tool('readme')
    eq(rm.render(SCRATCH), f"""{rm.WARNING}

# proj

> One line.

Some **text** with `code`.

```python
x = 1
print(x)
```

```
1
```

| a |
|---|
| 1 |

```python
y = 2
y
```

```python
z = list(range(100))
print(*z, sep="\\n")
```

```python
df
```

<table><tr><td>1</td></tr></table>

```python
plot()
```

```python
obj
```
""")

def test_readme_render_joins_a_snippet():
    "A code cell without outputs and the shown code cells right after it are one block; text, or an output, ends it"
    rm = _tool('readme')
    nb = dict(cells=[_code('import a'), _code('#| hide\nsecret()'), _code('#| eval: false\nb = a.f()'), _md('Then:'),
                     _code('c = 1', [_stream('x\n')]), _code('d = 2'), _code('#| echo: false\ne = 3'), _code('f = 4')])
    eq(rm.render(nb), f"""{rm.WARNING}

```python
import a

b = a.f()
```

Then:

```python
c = 1
```

```
x
```

```python
d = 2
```

```python
f = 4
```
""")

def test_readme_check(tmp_path, capsys):
    "`--check` fails with a diff while README.md differs, passes once written"
    rm = _tool('readme')
    nb, out = tmp_path/'index.ipynb', tmp_path/'README.md'
    nb.write_text(json.dumps(SCRATCH)); out.write_text('# old\n')
    eq(rm.main(['--nb', str(nb), '--out', str(out), '--check']), 1)
    assert '-# old' in capsys.readouterr().out
    eq(rm.main(['--nb', str(nb), '--out', str(out)]), 0)
    eq(rm.main(['--nb', str(nb), '--out', str(out), '--check']), 0)
    eq(out.read_text(), rm.render(SCRATCH))

# --- tools/proc_nbs.py ---------------------------------------------------------------------------------------

def test_proc_nbs_traces_warnings(tmp_path):
    "nbdev's warnings are found in its output, each traced to its notebook and cell (directives aside)"
    pn = _tool('proc_nbs')
    a, b = tmp_path/'a.ipynb', tmp_path/'b.ipynb'
    a.write_text(json.dumps(dict(cells=[_md('# A'), _code('x = 1')])))
    b.write_text(json.dumps(dict(cells=[_code('import os'), _md('text'), _code('#| hide\nimport io\ny = io.StringIO()')])))
    out = ("noise\n/x/processors.py:242: UserWarning: Found cells containing imports and other code. See FAQ.\n---\n"
           "import io\ny = io.StringIO()\n---\n\n  warn(...)\nmore\n"
           "UserWarning: Found cells containing imports and other code. See FAQ.\n---\nimport re\nz = 2\n---\n")
    cells = pn.warned_cells(out)
    eq(cells, ['import io\ny = io.StringIO()', 'import re\nz = 2'])
    eq(pn.find_cell(cells[0], [a, b]), (b, 2))
    eq(pn.find_cell(cells[1], [a, b]), None)
    eq(pn.warned_cells('Success.\n'), [])

# --- Quarto config for nbdev-docs ------------------------------------------------------------------------

def test_quarto_config():
    "`_quarto.yml` is a website with nbdev's metadata files; `nbdev.yml` is what nbdev would write from pyproject.toml"
    from nbdev.config import get_config
    from nbdev.quarto import _nbdev_yml
    q = yaml.safe_load((NBS/'_quarto.yml').read_text())
    eq(q['project']['type'], 'website')
    eq(set(q['metadata-files']), {'nbdev.yml', 'sidebar.yml'})
    assert (NBS/q['format']['html']['css']).exists()
    cfg = get_config()
    vals = {k: cfg[k] for k in ['title', 'description', 'branch', 'git_url', 'doc_host', 'doc_baseurl']}
    eq((NBS/'nbdev.yml').read_text(), _nbdev_yml.format(doc_path=cfg.doc_path.name, **vals))
    eq(yaml.safe_load((NBS/'nbdev.yml').read_text())['project']['output-dir'], '_docs')

# --- the offline site ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def site(tmp_path_factory, request):
    "The site, built by tools/build_docs.py; the notebooks saved without outputs are run only with --runslow"
    out = tmp_path_factory.mktemp('site')/'_site'
    cmd = [sys.executable, 'tools/build_docs.py', '--out', str(out), '--quiet'] + ([] if request.config.getoption('--runslow') else ['--no-exec'])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return out

class _Page(HTMLParser):
    "Ids, links and images of an HTML page"
    def __init__(self, text):
        super().__init__(); self.ids, self.refs, self.imgs = set(), [], []
        self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a: self.ids.add(a['id'])
        for k in ('href', 'src'):
            if a.get(k) is not None: self.refs.append((tag, a[k]))
        if tag == 'img': self.imgs.append(a.get('src', ''))

def _parse(site):
    return {p.relative_to(site).as_posix(): _Page(p.read_text(encoding='utf-8')) for p in site.rglob('*.html')}

def _expected_pages():
    "Page of every notebook, named as nbdev (and Quarto) name it"
    from nbdev.config import nbpath2html
    from nbdev.doclinks import nbglob
    return {Path(f).relative_to(NBS).as_posix(): nbpath2html(Path(f).relative_to(NBS)).as_posix() for f in nbglob(NBS)}

@pytest.mark.long                                        # the first test to use `site`: it waits for the build
def test_pages(site):
    "index.html, one page per module notebook and one per example, each with its title"
    pages = _expected_pages()
    for p in ['index.html', 'core.html', 'callback.html', 'learner.html', 'data.html', 'show.html']: assert p in pages.values(), p
    assert sum(p.startswith('examples/') for p in pages.values()) >= 1
    built = {p.relative_to(site).as_posix() for p in site.rglob('*.html')}
    eq(built, set(pages.values()))
    for nb, page in pages.items():
        text = (site/page).read_text(encoding='utf-8')
        h1 = re.search(r'<h1 class="title">(.+?)</h1>', text)
        assert h1 and h1.group(1).strip(), page
        src = json.loads((NBS/nb).read_text())                      # the title is the notebook's first H1
        first = next(''.join(c['source']) for c in src['cells'] if c['cell_type'] == 'markdown')
        eq(re.sub(r'<[^>]+>', '', unescape(h1.group(1))), re.match(r'#\s+(.*)', first).group(1).replace('`', '').strip())

def test_links_resolve(site):
    "Every relative link, image and stylesheet exists, and every #anchor is an id of its page"
    pages, bad = _parse(site), []
    for page, parsed in pages.items():
        for tag, ref in parsed.refs:
            u = urlsplit(ref)
            if u.scheme or ref.startswith('//'): continue          # data: URIs, external sites
            target = (site/page).parent/unquote(u.path) if u.path else site/page
            target = target.resolve()
            if not target.exists(): bad.append(f'{page}: <{tag}> {ref} (no file)'); continue
            if u.fragment:
                tp = target.relative_to(site.resolve()).as_posix()
                if u.fragment not in pages[tp].ids: bad.append(f'{page}: {ref} (no id {u.fragment!r} in {tp})')
    assert not bad, '\n'.join(bad[:30])

def test_sidebar_links_every_page(site):
    "Each page's sidebar links every page"
    pages = _parse(site)
    for page, parsed in pages.items():
        linked = {((site/page).parent/u).resolve().relative_to(site.resolve()).as_posix()
                  for tag, u in parsed.refs if tag == 'a' and u.endswith('.html') and not urlsplit(u).scheme}
        assert set(pages) <= linked, (page, set(pages) - linked)

def _text(path):
    "The text of an HTML page: no tags, entities decoded, no markdown marks (backticks, asterisks)"
    return _plain(unescape(re.sub(r'<[^>]+>', '', path.read_text(encoding='utf-8'))))

def _plain(s): return s.replace('`', '').replace('*', '')

def _public(mod):
    "Public functions and classes a module defines (its `__all__`)"
    return [n for n in getattr(mod, '__all__', []) if (inspect.isfunction(o := getattr(mod, n)) or inspect.isclass(o)) and o.__module__ == mod.__name__]

def test_api_documented(site):
    "Every public function, class and patched `Learner` method has a show_doc section (id = nbdev's anchor) with its docstring and docments"
    from fastcore.docments import docments
    d = importlib.import_module('fastai_mixaug._modidx').d
    pages, missing = _parse(site), []
    for modname, syms in d['syms'].items():
        mod = importlib.import_module(modname)
        names = _public(mod) + [n for k in syms if (n := k[len(modname) + 1:]).startswith('Learner.') and not n.split('.')[-1].startswith('_')]
        for name in names:
            page, _, anchor = syms[f'{modname}.{name}'][0].partition('#')
            if anchor not in pages[page].ids: missing.append(f'{name}: no section #{anchor} in {page}'); continue
            obj = mod
            for part in name.split('.'): obj = getattr(obj, part)
            text = _text(site/page)
            doc = inspect.getdoc(obj)
            if doc and _plain(doc.splitlines()[0]) not in text: missing.append(f'{name}: docstring not in {page}')
            for arg, comment in docments(obj).items():
                if comment and arg != 'return' and _plain(comment) not in text: missing.append(f'{name}({arg}): docment {comment!r} not in {page}')
    assert not missing, '\n'.join(missing[:40])

def test_named_sections(site):
    "The names the README promises, in their pages"
    pages = _parse(site)
    for page, ids in {'callback.html': ['mixup', 'cutmix', 'cutmixup', 'cutout'],
                      'core.html': ['sample_mix', 'mix_batch', 'sample_holes', 'erase_batch', 'mix_loss'],
                      'learner.html': ['learner.mixup', 'learner.cutmix', 'learner.cutmixup', 'learner.cutout', 'learner.remove_mixaug']}.items():
        for i in ids: assert i in pages[page].ids, (page, i)
    text = (site/'index.html').read_text(encoding='utf-8')
    assert re.search(r'<a href="callback.html#mixup" class="symbol"><code>MixUp', text)  # backticked names link to their section

def _signature(page_html:str, anchor:str) -> str|None:
    "The text of the show_doc signature in the section `anchor` of a page"
    m = re.search(rf'id="{re.escape(anchor)}".*?<pre>(.*?)</pre>', page_html, flags=re.S)
    if m is None: return None
    return unescape(re.sub(r'<[^>]+>', '', m.group(1).replace('<span class="line"', '\n<span class="line"'))).strip()

def _documented():
    "(object, its page, its anchor) for every public function, class and patched `Learner` method"
    d = importlib.import_module('fastai_mixaug._modidx').d
    for modname, syms in d['syms'].items():
        mod = importlib.import_module(modname)
        names = _public(mod) + [n for k in syms if (n := k[len(modname) + 1:]).startswith('Learner.') and not n.split('.')[-1].startswith('_')]
        for name in names:
            obj = mod
            for part in name.split('.'): obj = getattr(obj, part)
            page, _, anchor = syms[f'{modname}.{name}'][0].partition('#')
            yield name, obj, page, anchor

def test_signatures_show_declared_types(site):
    "A parameter shows a type exactly where the source declares one (never one guessed from its default), unions as `int|None`"
    bad, n = [], 0
    for name, obj, page, anchor in _documented():
        sig_text = _signature((site/page).read_text(encoding='utf-8'), anchor)
        if sig_text is None: bad.append(f'{name}: no signature in {page}#{anchor}'); continue
        assert 'NoneType' not in sig_text, sig_text
        code = '\n'.join(l.split(' # ')[0] for l in sig_text.splitlines())        # without the parameters' comments
        params = list(inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters.values())
        for prm in params:
            if prm.name == 'self' or prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD): continue
            m = re.search(rf'(?<![\w.*]){prm.name}([:=,)\s])', code)
            if m is None: bad.append(f'{name}({prm.name}): not in its signature'); continue
            n += 1
            if (m.group(1) == ':') != (prm.annotation is not inspect.Parameter.empty):
                bad.append(f'{name}({prm.name}): shown as {code[m.start():m.start() + 40]!r}, declared {prm.annotation!r}')
    assert not bad, '\n'.join(bad[:30])
    assert n > 50
    page = (site/'callback.html').read_text(encoding='utf-8')
    assert 'seed:int|None=None,' in _signature(page, 'mixup')
    assert re.search(r'(?<![\w.])seed=None\b', _signature(page, 'mixaugcallback'))      # declared without a type

def test_wrap_lines():
    "Each line of a <pre> becomes a span with its indent; spans open across a line break are closed and reopened"
    bd = _tool('build_docs')
    eq(bd.wrap_lines('<span class="k">def</span> f(\n    a, <span class="s">"""x\n  &amp;y"""</span>\n\n):\n'),
       '<span class="line" style="--i:0"><span class="k">def</span> f(</span>'
       '<span class="line" style="--i:4">    a, <span class="s">"""x</span></span>'
       '<span class="line" style="--i:2"><span class="s">  &amp;y"""</span></span>'
       '<span class="line" style="--i:0"></span>'
       '<span class="line" style="--i:0">):</span>')

def test_fix_cr():
    "Stream text as a terminal shows it: a carriage return overwrites its line (progress bars)"
    bd = _tool('build_docs')
    eq(bd._fix_cr('a\nEpoch 0%\rEpoch 50%\r          \r\n\n\n\nrow 1   \nxyzw\rab\n'), 'a\n\nrow 1\nabzw\n')

def test_long_lines_wrap(site):
    "Every <pre> of the pages is made of line spans, and the CSS wraps them, continuing past the line's indent"
    css = (site/'site.css').read_text()
    assert re.search(r'pre \{[^}]*white-space: pre-wrap;[^}]*overflow-wrap: anywhere;', css)
    assert re.search(r'pre \.line \{[^}]*display: block;[^}]*padding-left: calc\(\(var\(--i, 0\) \+ 4\) \* 1ch\);[^}]*text-indent: calc\(\(var\(--i, 0\) \+ 4\) \* -1ch\);', css)
    assert re.search(r'main img \{[^}]*max-width: 100%', css)
    n = 0
    for page in site.rglob('*.html'):
        for pre in re.findall(r'<pre\b[^>]*>(.*?)</pre>', page.read_text(encoding='utf-8'), flags=re.S):
            n += 1
            assert re.fullmatch(r'(<span class="line" style="--i:\d+">.*?</span>)*', pre, flags=re.S) and '\n' not in pre, (page.name, pre[:300])
    assert n > 100

@pytest.mark.slow
@pytest.mark.ci
def test_module_pages_show_outputs(site):
    "Module notebooks are saved without outputs: the build runs them, so their pages show what the cells print and draw"
    pages = _parse(site)
    for page in ['core.html', 'callback.html', 'learner.html', 'data.html', 'show.html', 'cli.html']:
        text = (site/page).read_text(encoding='utf-8')
        outs = [o for o in re.findall(r'<div class="output_area">(.*?)</div>\s*</div>\s*</div>', text, flags=re.S) if 'output_markdown' not in o]
        assert outs, f'{page}: no output of a cell (only show_doc)'
        assert 'Traceback' not in text, page
    for page in ['data.html', 'show.html']: assert any(s.startswith('data:image/png') for s in pages[page].imgs), f'{page}: no figure'
    assert 'Epoch 1/1 : |' not in (site/'learner.html').read_text(encoding='utf-8')    # progress bars as a terminal leaves them

def test_examples_show_outputs(site):
    "Example pages keep their saved outputs (figures as embedded images) and show no traceback"
    pages = _parse(site)
    ex = [p for p in pages if p.startswith('examples/')]
    assert ex
    for p in ex:
        assert any(s.startswith('data:image/') for s in pages[p].imgs), f'{p}: no figure'
        assert 'Traceback' not in (site/p).read_text(encoding='utf-8'), p

# --- a real browser --------------------------------------------------------------------------------------

@pytest.mark.long
@pytest.mark.skipif(_tool('screenshot').find_browser() is None, reason="no Chromium (apt-get install chromium)")
def test_browser_nothing_runs_off_at_1280px(site):
    "Laid out by Chromium at 1280 px, no signature, code, output, table or image sticks out of, or scrolls in, the text column"
    shot = _tool('screenshot')
    for page in ['index.html', 'core.html', 'callback.html', 'learner.html', 'show.html', 'cli.html', 'examples/quickstart.html']:
        eq(shot.overflow(site/page, 1280), [])

@pytest.mark.skipif(_tool('screenshot').find_browser() is None, reason="no Chromium (apt-get install chromium)")
def test_browser_screenshots(site, tmp_path):
    "Headless Chromium renders the index and an API page, styled: the header bar has the theme's colour"
    from PIL import Image
    shot = _tool('screenshot')
    for page in ['index.html', 'callback.html']:
        png = shot.screenshot(site/page, tmp_path/f'{page}.png', size=(1280, 1600))
        im = Image.open(png).convert('RGB')
        eq(im.size, (1280, 1600))
        assert max(abs(a - b) for a, b in zip(im.getpixel((640, 10)), (0x27, 0x80, 0xe3))) <= 3   # site.css loaded (relative link)
        assert len(im.getcolors(1 << 20)) > 50                     # text and code, not a blank page
