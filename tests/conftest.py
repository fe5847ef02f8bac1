import os
os.environ.setdefault("MPLBACKEND", "Agg")
import pytest, torch

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
