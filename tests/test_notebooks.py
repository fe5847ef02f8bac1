"Run every notebook under nbs/ as nbdev-test does (cells flagged `slow`/`cuda` are skipped), one pytest test each."
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb  # aliased: pytest would collect `test_nb`

NBS = sorted(p for p in Path(get_config().nbs_path).rglob('*.ipynb')
             if not p.name.startswith(('_', '.')) and '.ipynb_checkpoints' not in p.parts)

@pytest.mark.skipif(bool(os.environ.get('MIXAUG_SKIP_NOTEBOOKS')), reason='the notebooks were just run by nbdev-test (.ci/run)')
@pytest.mark.parametrize('nb', NBS, ids=lambda p: str(p.relative_to(get_config().nbs_path)))
def test_notebook(nb):
    ok, _ = run_nb(nb, skip_flags=get_config().tst_flags.split(), basepath=get_config().config_path, do_print=False)
    assert ok, f"{nb} failed (its traceback is above)"
