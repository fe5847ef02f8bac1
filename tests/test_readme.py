"README.md says what nbs/index.ipynb says (it is rendered from it by tools/readme.py)."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_readme_in_sync_with_index():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]

def test_readme_has_the_two_commands():
    txt = (ROOT/'README.md').read_text()
    assert 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[dev]" && fastai-mixaug' in txt
    assert '```sh\npython -m pytest\n```' in txt
