"""README.md says what nbs/index.ipynb says (it is rendered from it by tools/readme.py), and every ```python
snippet in it runs on its own.

Each snippet is run alone, as a script in a fresh Python process (`test_snippet_runs_alone`). The snippets train
(a model on MNIST-5k for an epoch: 0.5 to 2 minutes of CPU each), so those runs are `slow` and marked `ci`: CI
runs them, `--runslow` runs them. The default run checks each snippet without training it
(`test_snippet_names_defined`): it compiles, its imports work, and every name it uses is defined by the snippet
itself or by its own imports, as a snippet that leans on an earlier one's `dls` would not be."""
import ast, builtins, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def test_readme_in_sync_with_index():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]

def test_readme_has_the_two_commands():
    txt = (ROOT/'README.md').read_text()
    assert 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[dev]" && fastai-mixaug' in txt
    assert '```sh\npython -m pytest\n```' in txt

def test_readme_short_with_a_snippet_early():
    "A front door: at most 15,000 bytes, the first Python snippet in the first 60 lines"
    txt = (ROOT/'README.md').read_text(encoding='utf-8')
    assert len(txt.encode()) <= 15_000, len(txt.encode())
    assert txt.splitlines().index('```python') < 60


def _links(text:str) -> list[str]:
    "Relative link and image targets of a markdown text (no web addresses, no #anchors)"
    return [u.split('#')[0] for u in re.findall(r'\]\(([^)\s]+)\)', text) if not re.match(r'[a-z]+:', u) and not u.startswith('#')]


@pytest.mark.parametrize('page', ['README.md', 'docs/results.md', 'docs/development.md', 'benchmarks/README.md'])
def test_links_tie_to_files(page):
    "Every file or folder the README and the pages it sends readers to link is in the repository"
    f = ROOT/page
    links = _links(f.read_text(encoding='utf-8'))
    if page in ('README.md', 'docs/results.md'): assert links
    assert [u for u in links if not (f.parent/u).exists()] == []


def test_readme_sends_readers_to_the_moved_pages():
    "The full results, the speed tables and the development notes have pages of their own, linked from the README"
    txt = (ROOT/'README.md').read_text(encoding='utf-8')
    for page in ['docs/results.md', 'benchmarks/README.md', 'docs/development.md', 'results/study/study.png']: assert f']({page})' in txt, page
    assert '## Results\n' in txt
    res = (ROOT/'docs'/'results.md').read_text(encoding='utf-8')
    for h in ['## The study', '## A recipe', '## The main command']: assert h in res, h
    assert '## Summary of the committed run' in (ROOT/'benchmarks'/'README.md').read_text(encoding='utf-8')
    assert '## Tests' in (ROOT/'docs'/'development.md').read_text(encoding='utf-8')


def test_main_table_says_the_command_that_made_it():
    "The main command's table on the results page is the committed one, with the exact command that wrote it"
    res = (ROOT/'docs'/'results.md').read_text(encoding='utf-8')
    committed = (ROOT/'results'/'main'/'results.md').read_text(encoding='utf-8')
    cmd = committed.splitlines()[0].strip('`')
    assert cmd == 'fastai-mixaug --seeds 0,1,2 --out results/main --quiet'
    assert f'```\n{cmd}\n```' in res
    rows = [l for l in committed.splitlines() if l.startswith('| ')]
    from fastai_mixaug.train import AUGS
    assert len(rows) == 1 + len(AUGS) and all(r in res for r in rows)   # the header and a row per augmentation, none included


def test_readme_says_what_importing_patches():
    "The README names the two Learner methods importing the package wraps, and the package does wrap them"
    import fastai_mixaug.all  # noqa: F401
    from fastai.learner import Learner
    assert hasattr(Learner.one_batch, '_fastai') and hasattr(Learner.export, '_fastai_export')
    txt = (ROOT/'README.md').read_text(encoding='utf-8')
    assert '`Learner.one_batch`' in txt and '`Learner.export`' in txt and 'never changed' not in txt


# --- the snippets ----------------------------------------------------------------------------------------------

def snippets(text:str) -> list[tuple[str, str]]:
    "The ```python blocks of a markdown text, each with an id: its section's title and its number in the section"
    out, section, n = [], 'top', 0
    for m in re.finditer(r'^## ([^\n]+)$|^```python\n(.*?)^```$', text, flags=re.M | re.S):
        if m.group(1): section, n = m.group(1).strip(), 0; continue
        n += 1
        out.append((f"{re.sub(r'[^a-z0-9]+', '-', section.lower()).strip('-')}-{n}", m.group(2)))
    return out

SNIPPETS = snippets((ROOT/'README.md').read_text(encoding='utf-8'))
TRAINS = re.compile(r'\.(fit\w*|fine_tune)\(')

def test_snippets_found():
    "The extraction finds the README's snippets (else the tests below would check nothing)"
    assert [i for i, _ in SNIPPETS] == ['use-1', 'use-2', 'use-3', 'multi-gpu-training-1']
    assert snippets("## A b\n```python\nx = 1\n```\n```sh\nls\n```\n```python\ny\n```\n## C\n```python\nz\n```\n") == \
        [('a-b-1', 'x = 1\n'), ('a-b-2', 'y\n'), ('c-1', 'z\n')]

def _bound(tree) -> set:
    "Every name the code binds anywhere (assignments, imports, definitions, arguments, loop and `with` targets)"
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)): names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.add(n.name)
        elif isinstance(n, ast.arg): names.add(n.arg)
        elif isinstance(n, ast.alias) and n.name != '*': names.add((n.asname or n.name).split('.')[0])
        elif isinstance(n, ast.ExceptHandler) and n.name: names.add(n.name)
    return names

def undefined_names(code:str) -> list[str]:
    "Names `code` uses that neither it nor its own imports define (its imports are run, in a namespace of their own)"
    tree = ast.parse(code)
    ns = {}
    exec(compile(ast.Module(body=[t for t in tree.body if isinstance(t, (ast.Import, ast.ImportFrom))], type_ignores=[]),
                 '<snippet imports>', 'exec'), ns)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(used - _bound(tree) - set(ns) - set(dir(builtins)))

def test_undefined_names_finds_a_leaning_snippet():
    "The check catches what was wrong with the README: a snippet using an earlier snippet's `dls`"
    assert undefined_names("from math import *\nmodel = sqrt(2)\nlearn = Learner(dls, model)\nfor i in range(2): print(i)") == ['Learner', 'dls']
    assert undefined_names("import os.path\ndef f(a, *, b=1): return a + b + len(os.sep)\nf(1)") == []

@pytest.mark.parametrize('code', [c for _, c in SNIPPETS], ids=[i for i, _ in SNIPPETS])
def test_snippet_names_defined(code):
    "Without running it: it compiles, its imports work, and it uses no name that comes from outside it"
    assert undefined_names(code) == []

@pytest.mark.long
@pytest.mark.parametrize('code', [pytest.param(c, id=i, marks=[pytest.mark.slow, pytest.mark.ci] if TRAINS.search(c) else [])
                                  for i, c in SNIPPETS])
def test_snippet_runs_alone(code, tmp_path):
    "Run as a script, alone, in a fresh Python process (this checkout's package first on the path)"
    (tmp_path/'snippet.py').write_text(code)
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}
    r = subprocess.run([sys.executable, 'snippet.py'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    if TRAINS.search(code):                                  # fastai printed the epoch's row: loss, loss, accuracy, time
        assert re.search(r'\b0 +\d+\.\d{6} +\d+\.\d{6} +0\.\d{6} +\d\d:\d\d\b', r.stdout), r.stdout[-2000:]
