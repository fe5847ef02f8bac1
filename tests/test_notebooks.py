"""Run every notebook under nbs/ as nbdev-test does (cells flagged `slow`/`cuda` are skipped), one pytest test each,
named after its notebook (pytest prints the name when it starts: they are marked `long`).

The module notebooks (nbs/0*.ipynb, index.ipynb) run by default: they are the modules' source and their tests. The
example notebooks (nbs/examples/) are `slow`, about 20 s together on 2 cores: `--runslow` runs them, and CI runs
every notebook with nbdev-test (.ci/run), before pytest."""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb  # aliased: pytest would collect `test_nb`

NBS_PATH = get_config().nbs_path
NBS = sorted(p for p in Path(NBS_PATH).rglob('*.ipynb')
             if not p.name.startswith(('_', '.')) and '.ipynb_checkpoints' not in p.parts)

def _param(nb):
    rel = nb.relative_to(NBS_PATH)
    return pytest.param(nb, id=str(rel), marks=[pytest.mark.slow] if rel.parts[0] == 'examples' else [])

@pytest.mark.long
@pytest.mark.skipif(bool(os.environ.get('MIXAUG_SKIP_NOTEBOOKS')), reason='the notebooks were just run by nbdev-test (.ci/run)')
@pytest.mark.parametrize('nb', [_param(nb) for nb in NBS])
def test_notebook(nb):
    ok, _ = run_nb(nb, skip_flags=get_config().tst_flags.split(), basepath=get_config().config_path, do_print=False)
    assert ok, f"{nb} failed (its traceback is above)"
