import os
os.environ.setdefault("MPLBACKEND", "Agg")
import time
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

# --- progress: a test marked `long` says when it starts and how long it took (`pytest -v` names every test anyway) ---

_items, _started = {}, {}

def pytest_collection_finish(session): _items.update((it.nodeid, it) for it in session.items)

def _reporter(nodeid):
    "The terminal reporter, if `nodeid` is a `long` test that runs and pytest is not verbose"
    item = _items.get(nodeid)
    if item is None or 'long' not in item.keywords or evaluate_skip_marks(item) is not None: return None
    tr = item.config.pluginmanager.get_plugin('terminalreporter')
    return tr if tr is not None and item.config.get_verbosity() <= 0 else None

@pytest.hookimpl(tryfirst=True)                  # before the reporter writes anything for the test
def pytest_runtest_logstart(nodeid, location):
    if (tr := _reporter(nodeid)) is None: return
    tw = tr._tw
    if tw.width_of_current_line: tw.line()
    tw.write(f"{nodeid} ... ", flush=True)           # the test's result letter follows on this line
    tr.currentfspath = tr.config.rootpath/nodeid.split('::')[0]   # (so that the reporter writes no file name now)
    _started[nodeid] = time.perf_counter()

def pytest_runtest_logfinish(nodeid, location):
    if (tr := _reporter(nodeid)) is None or nodeid not in _started: return
    tr._tw.write(f" {time.perf_counter() - _started.pop(nodeid):.0f} s", flush=True)
    if tr.showfspath: tr.currentfspath = -1          # the reporter ends this line (with its progress) before the next result
    else: tr._tw.line()
