"The main command `fastai-mixaug`: its help, its usage errors, and tiny real runs checked against a replay and against what --help says."
import csv, math, os, random, re, shutil, statistics, subprocess, sys
from pathlib import Path
from helpers import usage_error
import pytest, torch
import fastai_mixaug.cli as cli
import fastai_mixaug.train as train
from fastai_mixaug.cli import AUGS, available_augs, main, small_cnn

FLAGS = ['--epochs', '--seeds', '--augs', '--bs', '--lr', '--model', '--threads', '--out', '--n-train', '--no-show', '--quiet']

def _cmd(*args):
    "Run the installed console script"
    exe = shutil.which('fastai-mixaug')
    assert exe, "the console script fastai-mixaug is not installed (pip install -e .)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)

def test_help():
    r = _cmd('--help')
    assert r.returncode == 0, r.stderr
    for w in FLAGS + ['MNIST-5k', 'results.md', 'results.csv', 'history.csv', '_batch.png', 'fastai-mixaug study --help']: assert w in r.stdout, w
    glued = re.sub(r'\n\s+', '', r.stdout)   # argparse breaks the comma-joined list of names anywhere, inside a name too
    for w in AUGS: assert w in glued, w
    flat = ' '.join(r.stdout.split())   # argparse wraps lines
    assert '(default: 1,000 for mnist, 5,000 for cifar10)' in flat and '(default: 30)' in flat and '--data {mnist,cifar10}' in flat

def _written_per_help(help_text, augs, show):
    "The files that --help's 'written into --out' list promises for a run of `augs`"
    block = help_text.split('written into --out:\n', 1)[1].split('\n\n', 1)[0]
    names = set()
    for line in block.splitlines():
        files, what = re.match(r'  (\S.*?)\s{2,}(.*)', line).groups()
        if 'unless --no-show' in what and not show: continue
        for f in files.split(', '): names |= {f.replace('<aug>', a) for a in augs} if '<aug>' in f else {f}
    return names

def test_bad_flag_exit_code():
    r = _cmd('--epochs', '0')
    assert r.returncode == 2
    assert 'fastai-mixaug: error: argument --epochs: expected a positive integer, got 0' in r.stderr

BAD = [
    (['--augs', 'mixup,flip'], "argument --augs: unknown augmentation 'flip': choose from " + ','.join(AUGS)),
    (['--augs', ' , '], "argument --augs: give at least one of " + ','.join(AUGS)),
    (['--augs', 'mixup,MixUp'], "argument --augs: an augmentation is listed twice in 'mixup,MixUp'"),
    (['--augs', 'none,mixup:alpha'], "argument --augs: expected key=value after ':' in 'mixup:alpha', got 'alpha'"),
    (['--augs', 'none,flip:p=1'], "argument --augs: unknown augmentation 'flip:p=1': choose from " + ','.join(AUGS)),
    (['--augs', 'none,cutmix:p=2'], "argument --augs: 'cutmix:p=2': `p` must be in [0, 1], got 2"),
    (['--augs', 'none,mixup:beta=1'], "argument --augs: 'mixup:beta=1': learn.mixup() has no argument 'beta'; it takes alpha, p, mode,"),
    (['--augs', 'none:p=1,mixup'], "argument --augs: 'none:p=1': none takes no arguments"),
    (['--augs', 'none,resizemix:scale=(0.9, 0.1)'], "argument --augs: 'resizemix:scale=(0.9, 0.1)': `scale` must be (lo, hi) with 0 < lo <= hi < 1"),
    (['--augs', 'none,cutmix:mode=batch,cutmix:mode=batch'], "argument --augs: an augmentation is listed twice"),
    (['--augs', 'none,mixup:alpha=1:alpha=2'], "argument --augs: 'alpha' is given twice in 'mixup:alpha=1:alpha=2'"),
    (['--augs', 'none,mixup:alpha='], "argument --augs: 'mixup:alpha=': `alpha` must be"),
    (['--epochs', '2.5'], "argument --epochs: expected a positive integer, got '2.5'"),
    (['--epochs', '-1'], "argument --epochs: expected a positive integer, got -1"),
    (['--bs', '0'], "argument --bs: expected a positive integer, got 0"),
    (['--lr', '0'], "argument --lr: expected a positive number, got 0"),
    (['--lr', 'nan'], "argument --lr: expected a positive number, got nan"),
    (['--lr', 'fast'], "argument --lr: expected a positive number, got 'fast'"),
    (['--seeds', '0,x'], "argument --seeds: expected comma-separated integers, got '0,x'"),
    (['--seeds', ','], "argument --seeds: give at least one seed"),
    (['--seeds', '1,2,1'], "argument --seeds: a seed is listed twice in '1,2,1'"),
    (['--model', 'vgg'], "argument --model: invalid choice: 'vgg' (choose from 'small_cnn', 'xresnet18', 'resnet20')"),
    (['--threads', '0'], "argument --threads: expected a positive integer, got 0"),
    (['--n-train', '4001'], "argument --n-train: at most 4000 for MNIST-5k, got 4001"),
    (['--n-train', '100', '--bs', '128'], "argument --n-train: 100 training images is fewer than one batch (--bs 128)"),
    (['--epochs'], "argument --epochs: expected one argument"),
    (['--frobnicate'], "unrecognized arguments: --frobnicate"),
]

@pytest.mark.parametrize('argv,msg', BAD, ids=[' '.join(a) for a, _ in BAD])
def test_bad_flags(argv, msg, capsys, tmp_path): usage_error(main, 'fastai-mixaug', argv, msg, capsys, tmp_path/'out')

def test_aug_without_its_one_liner(monkeypatch, capsys, tmp_path):
    "A name in the registry whose learn.<name>() this fastai_mixaug lacks (a one-liner not written yet): a usage error, nothing trained"
    monkeypatch.setattr(train, 'AUGS', AUGS + ('notyet',))
    assert 'notyet' not in available_augs()
    with pytest.raises(SystemExit) as e: main(['--augs', 'none,notyet,mixup', '--out', str(tmp_path/'out')])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("fastai-mixaug: error: argument --augs: learn.notyet() does not exist in this fastai_mixaug (yet): "
                                                       "choose from " + ','.join(available_augs()))
    assert not (tmp_path/'out').exists()

def test_aug_arguments_reach_the_callback():
    "`name:key=value...` gives the one-liner those arguments (literals, tuples with commas, bare words as strings), on top of AUG_KW"
    a = cli.parser().parse_args(['--augs', "none,CutMix:p=0.5:off_last=0.25:mode=batch,resizemix:scale=(0.2, 0.4),manifold_mixup:alpha=1,manifold_mixup:modules=['0', '1']"])
    assert a.augs == ['none', 'cutmix:p=0.5:off_last=0.25:mode=batch', 'resizemix:scale=(0.2, 0.4)', 'manifold_mixup:alpha=1', "manifold_mixup:modules=['0', '1']"]
    assert cli.parse_aug(a.augs[4]) == ('manifold_mixup', {'modules': ['0', '1']})   # a list: its commas stay too
    from fastai_mixaug.all import CutMix, ResizeMix, ManifoldMixUp
    from fastai_mixaug.data import mnist_dls
    dls = mnist_dls(bs=32, n_train=64, num_workers=0)
    cb = [c for c in cli.make_learner(dls, a.augs[1], 0).cbs if isinstance(c, CutMix)]
    assert len(cb) == 1 and (cb[0].p, cb[0].off_last, cb[0].mode) == (0.5, 0.25, 'batch')
    cb = [c for c in cli.make_learner(dls, a.augs[2], 0).cbs if isinstance(c, ResizeMix)][0]
    assert tuple(cb.scale) == (0.2, 0.4)
    cb = [c for c in cli.make_learner(dls, a.augs[3], 0).cbs if isinstance(c, ManifoldMixUp)][0]
    assert cb.alpha == 1 and list(cb.modules) == cli.AUG_KW[('manifold_mixup', 'small_cnn')]['modules']   # the model's default sites kept
    assert not [c for c in cli.make_learner(dls, 'none', 0).cbs if isinstance(c, (CutMix, ResizeMix, ManifoldMixUp))]

def _unwritable(tmp_path):
    "An existing folder this process cannot write into (a read-only one; as root, permissions don't stop writes: /sys)"
    if os.geteuid() != 0:
        d = tmp_path/'ro'; d.mkdir(); d.chmod(0o500)
        return d
    d = Path('/sys')
    try: (d/'mixaug_probe').write_text('')
    except OSError: return d
    pytest.skip('no read-only folder to try')

@pytest.mark.parametrize('case', ['a file', 'under a file', 'unwritable folder', 'in an unwritable folder'])
def test_bad_out(case, capsys, tmp_path):
    "--out that is a file, under a file, or where nothing can be written: a usage error naming the problem, not a traceback"
    f = tmp_path/'taken'; f.write_text('')
    out, msg = {'a file': (f, f"{str(f)!r} exists and is not a folder"),
                'under a file': (f/'sub'/'dir', f"{str(f/'sub'/'dir')!r} is under {str(f)!r}, which is a file")}.get(case, (None, None))
    if out is None:
        ro = _unwritable(tmp_path)
        out = ro if case == 'unwritable folder' else ro/'mixaug_out'
        msg = f"cannot write into {str(out)!r}: " if case == 'unwritable folder' else f"cannot create {str(out)!r}: "
    with pytest.raises(SystemExit) as e: main(['--out', str(out), '--epochs', '1'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: fastai-mixaug'), err
    assert f"fastai-mixaug: error: argument --out: {msg}" in err, err
    if case == 'under a file':
        r = _cmd('--out', str(out))                              # the console script too: exit 2, no traceback
        assert r.returncode == 2 and 'Traceback' not in r.stderr and msg in r.stderr, r.stderr

def _read(p): return list(csv.DictReader(open(p)))

@pytest.mark.long
def test_tiny_run(tmp_path, capsys):
    "2 seeds x (none, cutmix) on 96 images for 1 epoch: files, rows, the error against a replay, the summary, what it prints"
    out = tmp_path/'res'
    threads = torch.get_num_threads()
    assert main(['--epochs', '1', '--augs', 'none,cutmix', '--seeds', '3,4', '--n-train', '96', '--bs', '32',
                 '--out', str(out), '--quiet', '--no-show']) is None  # so the console script's sys.exit(main()) exits 0
    assert torch.get_num_threads() == threads              # --threads is put back
    printed = capsys.readouterr().out
    # what --help says it writes, with --no-show, is what it wrote (the PNGs: test_one_seed)
    assert {p.name for p in out.iterdir()} == _written_per_help(_cmd('--help').stdout, ['none', 'cutmix'], show=False) \
           == {'history.csv', 'results.csv', 'results.md', 'runs.csv'}
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
    assert float(hist[3]['error']) == pytest.approx(float(r['error']), abs=1e-6)   # the final evaluation is the last epoch's validation
    assert 0 <= float(r['ece']) < 1 and float(r['nll']) == float(r['valid_loss'])
    # the summary: mean and sample std over seeds, difference to none, seeds better than none
    assert [(s['aug'], s['n_seeds']) for s in res] == [('none', '2'), ('cutmix', '2')]
    for s in res:
        errs = [float(r['error']) for r in runs if r['aug'] == s['aug']]
        assert float(s['error']) == pytest.approx(statistics.mean(errs))
        assert float(s['error_std']) == pytest.approx(statistics.stdev(errs))
    assert float(res[1]['error_vs_none']) == pytest.approx(float(res[1]['error']) - float(res[0]['error']))
    assert float(res[0]['error_vs_none']) == 0.
    better = sum(float(runs[i + 2]['error']) < float(runs[i]['error']) for i in (0, 1))
    assert int(res[1]['seeds_better']) == better
    md = (out/'results.md').read_text()
    assert md.startswith(f"`fastai-mixaug --epochs 1 --augs none,cutmix --seeds 3,4 --n-train 96 --bs 32 --out {out} --quiet --no-show`")
    e, sd = float(res[1]['error']) * 100, float(res[1]['error_std']) * 100
    assert f"| cutmix | {e:.2f} ± {sd:.2f} | {(float(res[1]['error']) - float(res[0]['error'])) * 100:+.2f} |" in md
    assert f"- Per seed (same initial weights and data order as none), better than none in: cutmix {better} of 2 seeds.\n" in md
    assert "96 training images, 1 epoch.\n" in md and 'the default' not in md
    assert '\n' + md + '\nWritten to ' in printed                   # printed = written
    assert printed.rstrip().endswith(f"Written to {out}/: results.md, results.csv, runs.csv, history.csv")

def test_one_seed(tmp_path, capsys):
    "One seed: no '± 0.00' (the spread is n/a) and the findings say so; the PNGs --help promises without --no-show"
    out = tmp_path/'res'
    main(['--epochs', '1', '--augs', 'none,mixup', '--n-train', '64', '--bs', '32', '--out', str(out), '--quiet'])
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == _written_per_help(_cmd('--help').stdout, ['none', 'mixup'], show=True) \
           == {'history.csv', 'results.csv', 'results.md', 'runs.csv', 'none_batch.png', 'mixup_batch.png'}
    for f in out.glob('*.png'): assert f.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    runs, res = _read(out/'runs.csv'), _read(out/'results.csv')
    assert '± 0.00' not in printed and '± 0.00' not in (out/'results.md').read_text()
    e = [float(r['error']) * 100 for r in runs]
    assert f"| none | {e[0]:.2f} ± n/a | — |" in printed and f"| mixup | {e[1]:.2f} ± n/a | {e[1] - e[0]:+.2f} |" in printed
    assert all(math.isnan(float(r['error_std'])) for r in res)
    d = e[1] - e[0]
    what = 'lower error than' if d < 0 else 'higher error than' if d > 0 else 'the same error as'
    assert f"- 1 of 1 augmentations had {what} none (points): mixup {d:+.2f}\n" in printed
    assert "- One seed: the spread over seeds is not measured" in printed

def test_step_timers_window(monkeypatch):
    "The timers put a callback's work in the augmentation's share only if it runs in `before_batch`/`after_loss` between orders -1 and 2"
    from fastai.callback.core import Callback
    from fastai.test_utils import synth_learner
    import fastai_mixaug.cli as cli
    clock = [0.]
    monkeypatch.setattr(train.time, 'perf_counter', lambda: clock[0])   # time passes only when a Work callback runs
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

def test_regime_line():
    "The line that says what the run's size and schedule are; the default's says what regime it is, and how to see the other"
    assert cli._regime(1000, 30) == ("1,000 training images, 30 epochs (the default): a small training set and a long schedule, the regime "
                                     "where regularisers like these are meant to pay off; run with --n-train 4000 --epochs 8 for the opposite "
                                     "case, more data and a short schedule.")
    assert cli._regime(4000, 8) == "4,000 training images, 8 epochs."
    assert cli._regime(1000, 1) == "1,000 training images, 1 epoch."

def test_a_mix_of_ones_own_in_the_command(tmp_path):
    "A mix given a one-liner by add_mixaug is an augmentation name of the main command too (--augs, the table)"
    from fastai.learner import Learner
    import fastai_mixaug.learner as lib
    from fastai_mixaug.all import MixUp, add_mixaug
    class HalfMixUp(MixUp):
        "MixUp at α 0.2 (a stand-in for a mix of one's own)"
        def __init__(self, **kw): super().__init__(alpha=0.2, **kw)
    add_mixaug('halfmixup', HalfMixUp)
    try:
        assert 'halfmixup' in train.known_augs() and 'halfmixup' in available_augs()
        assert cli.parser().parse_args(['--augs', 'none,halfmixup']).augs == ['none', 'halfmixup']
        threads = torch.get_num_threads()
        try: main(['--augs', 'none,halfmixup', '--n-train', '64', '--epochs', '1', '--bs', '32', '--out', str(tmp_path), '--quiet', '--no-show'])
        finally: torch.set_num_threads(threads)
        assert [r['aug'] for r in csv.DictReader(open(tmp_path/'results.csv'))] == ['none', 'halfmixup']
    finally:
        del lib.MIXAUGS['halfmixup']; lib._ADDED.discard('halfmixup'); delattr(Learner, 'halfmixup')
    assert 'halfmixup' not in train.known_augs()
