"The main command `fastai-mixaug`: its help, its usage errors, and a tiny real run checked against a replay."
import csv, random, shutil, statistics, subprocess, sys
from pathlib import Path
import pytest, torch
from fastai_mixaug.cli import AUGS, main, small_cnn

FLAGS = ['--epochs', '--seeds', '--augs', '--bs', '--lr', '--model', '--threads', '--out', '--n-train', '--no-show', '--quiet']

def _cmd(*args):
    "Run the installed console script"
    exe = shutil.which('fastai-mixaug')
    assert exe, "the console script fastai-mixaug is not installed (pip install -e .)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

def test_help():
    r = _cmd('--help')
    assert r.returncode == 0, r.stderr
    for w in FLAGS + list(AUGS) + ['MNIST-5k', 'results.md', 'results.csv', 'history.csv', '_batch.png']: assert w in r.stdout, w

def test_bad_flag_exit_code():
    r = _cmd('--epochs', '0')
    assert r.returncode == 2
    assert 'fastai-mixaug: error: argument --epochs: expected a positive integer, got 0' in r.stderr

BAD = [
    (['--augs', 'mixup,flip'], "argument --augs: unknown augmentation 'flip': choose from none,mixup,cutmix,cutout,cutmixup"),
    (['--augs', ' , '], "argument --augs: give at least one of none,mixup,cutmix,cutout,cutmixup"),
    (['--augs', 'mixup,MixUp'], "argument --augs: an augmentation is listed twice in 'mixup,MixUp'"),
    (['--epochs', '2.5'], "argument --epochs: expected a positive integer, got '2.5'"),
    (['--epochs', '-1'], "argument --epochs: expected a positive integer, got -1"),
    (['--bs', '0'], "argument --bs: expected a positive integer, got 0"),
    (['--lr', '0'], "argument --lr: expected a positive number, got 0"),
    (['--lr', 'nan'], "argument --lr: expected a positive number, got nan"),
    (['--lr', 'fast'], "argument --lr: expected a positive number, got 'fast'"),
    (['--seeds', '0,x'], "argument --seeds: expected comma-separated integers, got '0,x'"),
    (['--seeds', ','], "argument --seeds: give at least one seed"),
    (['--seeds', '1,2,1'], "argument --seeds: a seed is listed twice in '1,2,1'"),
    (['--model', 'vgg'], "argument --model: invalid choice: 'vgg' (choose from 'small_cnn', 'xresnet18')"),
    (['--threads', '0'], "argument --threads: expected a positive integer, got 0"),
    (['--n-train', '4001'], "argument --n-train: at most 4000, got 4001"),
    (['--n-train', '100', '--bs', '128'], "argument --bs: 128 is more than the 100 training images"),
    (['--epochs'], "argument --epochs: expected one argument"),
    (['--frobnicate'], "unrecognized arguments: --frobnicate"),
]

@pytest.mark.parametrize('argv,msg', BAD, ids=[' '.join(a) for a, _ in BAD])
def test_bad_flags(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e: main(argv + ['--out', str(tmp_path/'out')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: fastai-mixaug'), err
    assert f'fastai-mixaug: error: {msg}' in err, err
    assert not (tmp_path/'out').exists()                    # nothing was written

def test_out_is_a_file(capsys, tmp_path):
    f = tmp_path/'taken'; f.write_text('')
    with pytest.raises(SystemExit) as e: main(['--out', str(f)])
    assert e.value.code == 2
    assert f"argument --out: {str(f)!r} exists and is not a folder" in capsys.readouterr().err

def _read(p): return list(csv.DictReader(open(p)))

@pytest.mark.long
def test_tiny_run(tmp_path, capsys):
    "2 seeds x (none, cutmix) on 96 images for 1 epoch: files, rows, the error against a replay, the summary"
    out = tmp_path/'res'
    threads = torch.get_num_threads()
    assert main(['--epochs', '1', '--augs', 'none,cutmix', '--seeds', '3,4', '--n-train', '96', '--bs', '32',
                 '--out', str(out), '--quiet', '--no-show']) is None  # so the console script's sys.exit(main()) exits 0
    assert torch.get_num_threads() == threads              # --threads is put back
    # the PNGs are checked in nbs/05_cli.ipynb's quick run
    assert sorted(p.name for p in out.iterdir()) == ['history.csv', 'results.csv', 'results.md', 'runs.csv']
    runs, hist, res = _read(out/'runs.csv'), _read(out/'history.csv'), _read(out/'results.csv')
    assert [(r['aug'], r['seed']) for r in runs] == [('none', '3'), ('none', '4'), ('cutmix', '3'), ('cutmix', '4')]
    assert [(r['aug'], r['seed'], r['epoch']) for r in hist] == [(a, s, '0') for a, s in [('none', '3'), ('cutmix', '3'), ('none', '4'), ('cutmix', '4')]]
    # the error is 1 - accuracy on the 1,000 validation images after the last epoch: replay one run with plain fastai
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from fastai_mixaug.data import mnist_dls
    import fastai_mixaug.learner  # learn.cutmix()
    torch.set_num_threads(1)
    try:
        dls = mnist_dls(bs=32, n_train=96, num_workers=0)
        set_seed(4, reproducible=True); dls.train.rng = random.Random(4)
        learn = Learner(dls, small_cnn(), loss_func=torch.nn.CrossEntropyLoss(), metrics=accuracy).cutmix()
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
        valid_loss, acc = learn.validate()
    finally: torch.set_num_threads(threads)
    assert len(dls.valid_ds) == 1000
    r = runs[3]
    assert float(r['error']) == pytest.approx(1 - acc, abs=1e-6)
    assert float(r['valid_loss']) == pytest.approx(valid_loss, rel=1e-5)
    assert float(hist[3]['error']) == float(r['error'])
    # the summary: mean and sample std over seeds, difference to none
    assert [(s['aug'], s['n_seeds']) for s in res] == [('none', '2'), ('cutmix', '2')]
    for s in res:
        errs = [float(r['error']) for r in runs if r['aug'] == s['aug']]
        assert float(s['error']) == pytest.approx(statistics.mean(errs))
        assert float(s['error_std']) == pytest.approx(statistics.stdev(errs))
    assert float(res[1]['error_vs_none']) == pytest.approx(float(res[1]['error']) - float(res[0]['error']))
    assert float(res[0]['error_vs_none']) == 0.
    md = (out/'results.md').read_text()
    assert md.startswith(f"`fastai-mixaug --epochs 1 --augs none,cutmix --seeds 3,4 --n-train 96 --bs 32 --out {out} --quiet --no-show`")
    e, sd = float(res[1]['error']) * 100, float(res[1]['error_std']) * 100
    assert f"| cutmix | {e:.2f} ± {sd:.2f} | {(float(res[1]['error']) - float(res[0]['error'])) * 100:+.2f} |" in md
    assert md == capsys.readouterr().out.split('\n\n', 1)[1].rsplit('\n\nWritten to', 1)[0] + '\n'  # printed = written

def test_step_timers_window(monkeypatch):
    "The timers put a callback's work in the augmentation's share only if it runs in `before_batch`/`after_loss` between orders -1 and 2"
    from fastai.callback.core import Callback
    from fastai.test_utils import synth_learner
    import fastai_mixaug.cli as cli
    clock = [0.]
    monkeypatch.setattr(cli.time, 'perf_counter', lambda: clock[0])   # time passes only when a Work callback runs
    class Work(Callback):
        def __init__(self, order, event, dt):
            self.order, self.dt = order, dt
            setattr(self, event, self.work)
        def work(self):
            if self.training: clock[0] += self.dt
    tic, toc = cli.step_timers()
    learn = synth_learner(n_trn=3)                                      # 3 training batches
    learn.fit(1, cbs=[tic, toc, Work(0, 'before_batch', 1.), Work(1, 'after_loss', 10.),       # augmentation-like
                      Work(5, 'before_batch', 100.), Work(0, 'after_step', 1000.)])           # the rest of the step
    assert tic.augs == [11.] * 3
    assert tic.steps == [1111.] * 3
