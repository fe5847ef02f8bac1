import os
os.environ.setdefault("MPLBACKEND", "Agg")
import pytest, torch
from _pytest.skipping import evaluate_skip_marks   # (skip and skipif markers: a skipped test is not announced)

def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")

def pytest_collection_modifyitems(config, items):
    if not config.getoption("--runslow"):
        skip = pytest.mark.skip(reason="slow: run with --runslow")
        for it in items:
            if "slow" in it.keywords: it.add_marker(skip)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for it in items:
            if "cuda" in it.keywords: it.add_marker(skip)

# --- progress: a test marked `long` is named on a line of its own when it starts (its result letter follows it), so
# a run shows what it is busy with; `pytest -v` names every test anyway, and `--durations=N` gives the times ---

_items = {}

def pytest_collection_finish(session): _items.update((it.nodeid, it) for it in session.items)

@pytest.hookimpl(tryfirst=True)                  # before the reporter writes anything for the test
def pytest_runtest_logstart(nodeid, location):
    item = _items.get(nodeid)
    if item is None or 'long' not in item.keywords or evaluate_skip_marks(item) is not None: return
    tr = item.config.pluginmanager.get_plugin('terminalreporter')
    if tr is None or item.config.get_verbosity() > 0: return
    if tr._tw.width_of_current_line: tr._tw.line()
    tr._tw.write(f"{nodeid} ... ", flush=True)
    tr.currentfspath = tr.config.rootpath/nodeid.split('::')[0]   # (so that the reporter writes no file name now)
