"""The example notebooks (nbs/examples/) are committed with the outputs of a full run, slow cells included.

nbdev-test (CI) runs their cells that are not flagged `slow`; these tests check what it can't: that the saved
outputs are there and are real (no errors, figures drawn, every slow cell run), so the docs show them."""
import json, re
from pathlib import Path
import pytest

EX = Path(__file__).resolve().parent.parent/'nbs'/'examples'
NAMES = ['01_quickstart', '02_fine_tune', '03_multilabel_regression', '04_visual_tour', '05_keras_migration', '06_tabular_text_hidden']

def _nb(name): return json.loads((EX/f'{name}.ipynb').read_text(encoding='utf-8'))
def _src(c): return ''.join(c['source'])
def _flags(c): return {m.group(1) for m in re.finditer(r'^#\|\s*([\w-]+)', _src(c), flags=re.M)}
def _code(nb): return [c for c in nb['cells'] if c['cell_type'] == 'code']

def test_the_examples():
    "The six example notebooks, and nothing half-made beside them"
    assert sorted(p.stem for p in EX.glob('*.ipynb')) == NAMES

@pytest.mark.parametrize('name', NAMES)
def test_saved_outputs(name):
    "No error or traceback saved; every slow cell and every drawing cell has its output; at least one figure"
    nb, bad = _nb(name), []
    for i, c in enumerate(_code(nb)):
        src, outs = _src(c), c.get('outputs', [])
        for o in outs:
            text = ''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', ''))
            if o['output_type'] == 'error' or re.search(r'Traceback|\w(Error|Exception): ', text): bad.append(f'code cell {i}: an error is saved')
        if 'slow' in _flags(c) and not outs: bad.append(f'code cell {i}: slow cell without outputs (run the notebook in full)')
        draws = any(re.search(r'\bshow_(mix_)?batch\(|^show\(|plt\.subplots\(', l) and 'show=False' not in l for l in src.splitlines())
        if draws and not any(k.startswith('image/') for o in outs for k in o.get('data', {})): bad.append(f'code cell {i}: draws, but no figure saved')
    assert not bad, '\n'.join(bad)
    assert any(k.startswith('image/') for c in _code(nb) for o in c.get('outputs', []) for k in o.get('data', {}))

@pytest.mark.parametrize('name', NAMES)
def test_no_placeholders(name):
    "No prose left to write"
    for c in _nb(name)['cells']:
        assert not re.search(r'RESULTS_PROSE|\bTODO\b|\bFIXME\b|\bXXX\b', _src(c)), _src(c)[:200]

@pytest.mark.parametrize('name', NAMES)
def test_small(name):
    "Figures are saved compactly (photos as JPEG): each notebook stays under 1.5 MB"
    assert (EX/f'{name}.ipynb').stat().st_size < 1_500_000
