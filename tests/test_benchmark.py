"The benchmark (benchmarks/bench.py) runs, times the library's own callback code, and its structural checks hold. No timings are asserted."
import csv, importlib.util, math, sys
from pathlib import Path
import pytest, torch
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def bench():
    spec = importlib.util.spec_from_file_location('mixaug_bench', ROOT / 'benchmarks' / 'bench.py')
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod

@pytest.fixture
def one_thread():
    "The quick run with one torch thread (stable on a loaded machine); the thread count is restored after"
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)

def test_quick_run_writes_table_and_csv(bench, tmp_path, one_thread):
    "`bench.py --quick` runs every op against the floor and every peer, and writes the markdown table and the CSV"
    rows, structure, syncs, fits = bench.main(['--quick', '--threads', '1', '--out', str(tmp_path)])
    md, csv_path = tmp_path / 'bench_cpu_quick.md', tmp_path / 'bench_cpu_quick.csv'
    assert md.exists() and csv_path.exists()
    text = md.read_text()
    for section in ('## Targets', '## Against the floor', '## Against the peers', '## Structure of our `before_batch`', 'torch threads: 1'):
        assert section in text, section
    got = list(csv.DictReader(open(csv_path)))
    assert len(got) == len(rows) and got[0].keys() == rows[0].keys()
    shapes = {(r['shape'], r['dtype']) for r in got}
    assert shapes == {('8x3x16x16', 'float32'), ('16x3x8x8', 'float32'), ('8x3x16x16', 'bfloat16')}
    for shape, dtype in shapes:
        for op in bench.OPS:
            grp = [r for r in got if (r['shape'], r['dtype'], r['op']) == (shape, dtype, op)]
            assert [r['impl'] for r in grp] == [im.name for im in bench.impls_for(op)]  # every impl has a row
            fl = next(r for r in grp if r['lib'] == 'floor')
            assert float(fl['x_floor']) == 1. and abs(float(fl['peak_mem_x']) - 2.) < 1e-3  # x[perm] and the output
            for r in grp:
                if r['lib'] in ('ours', 'floor', 'ref'): assert r['error'] == '', r  # ours runs in float32 and bfloat16
                if r['error']: continue
                assert int(r['reps']) == 3
                for k in ('median_ms', 'x_floor', 'ours_elem_over', 'ours_batch_over', 'peak_mem_x'):
                    assert math.isfinite(float(r[k])) and float(r[k]) >= 0, (k, r)
                assert float(r['q1_ms']) <= float(r['median_ms']) <= float(r['q3_ms'])
            assert {r['mode'] for r in grp if r['lib'] == 'ours'} == {'per-sample', 'per-batch'}
    assert {r['mode'] for r in got if r['lib'] not in ('ours', 'floor', 'ref')} == {'per-sample', 'per-batch'}
    assert len(structure) == 2 * len(bench.OPS) and fits == []

@pytest.mark.parametrize('op,cls', [('mixup', MixUp), ('cutmix', CutMix), ('cutmixup', CutMixUp), ('cutout', Cutout)])
@pytest.mark.parametrize('mode', ['elem', 'batch'])
def test_ours_times_the_callbacks_before_batch(bench, op, cls, mode):
    "What is timed as 'ours' is the library callback's own `before_batch`, on a training Learner, mixing the batch it is given"
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    prep, run = bench.ours(op, mode).setup(x, y)
    cb = run.__self__
    assert type(cb) is cls and cb.mode == mode and run.__func__ is cls.before_batch
    prep(); run()
    xb, yb = cb.learn.xb, cb.learn.yb
    assert xb[0].shape == x.shape and xb[0] is not x and not torch.equal(xb[0], x)
    assert yb[0] is y  # integer targets are kept (the loss is mixed in after_loss)
    assert cb.learn.training

def test_floor_is_lerp_over_a_permutation(bench):
    "The floor computes `torch.lerp(x[perm], x, w)` with a random permutation and per-sample weights, replayed here"
    x = torch.randn(6, 2, 4, 4)
    torch.manual_seed(1); _, run = bench.floor().setup(x, None)
    torch.manual_seed(1); perm, w = torch.randperm(6), torch.rand(6, 1, 1, 1)
    assert sorted(perm.tolist()) == list(range(6))
    assert torch.equal(run(), torch.lerp(x[perm], x, w))

def test_peak_memory_measure(bench):
    "The CPU peak-memory measure counts what a call allocates above what existed before it, output included (± scalar wrappers)"
    x = torch.randn(16, 3, 32, 32)
    nb = x.numel() * x.element_size()
    def peak(f): return bench.peak_extra_bytes(lambda: None, f, x.device)
    def near(v, n): return n <= v < n + 1024  # allocations of a few bytes (Python scalars wrapped as tensors) are counted too
    assert near(peak(lambda: x.clone()), nb)
    assert near(peak(lambda: x.mul_(1.)), 0)
    assert near(peak(lambda: (x * 2).add_(1)), nb)
    assert near(peak(lambda: (x * 2) + 1), 2 * nb)  # the temporary and the result coexist
    perm, w = torch.randperm(16), torch.rand(16, 1, 1, 1)
    assert near(peak(lambda: torch.lerp(x[perm], x, w)), 2 * nb)
    assert near(peak(lambda: torch.lerp(x[perm], x, w).sum()), 2 * nb)  # freed temporaries lower the running total

@pytest.mark.parametrize('op', ['mixup', 'cutmix', 'cutmixup', 'cutout'])
@pytest.mark.parametrize('mode', ['elem', 'batch'])
def test_before_batch_loop_free_and_sync_free(bench, op, mode):
    "Our `before_batch` runs the same torch ops at batch size 4 and 32 (no Python loop over samples) and no host-sync op"
    s = bench.structure_check(op, mode)
    assert s['loop_free'], f"ops whose count grows with the batch: {s['grows']}"
    assert s['sync_ops'] == [], s['sync_ops']

def test_structure_check_detects_a_loop_and_a_sync(bench):
    "The structural check itself: a per-sample Python loop changes the op count, and `.item()` shows up as a sync op"
    def looped(bs):
        x = torch.randn(bs, 3)
        return bench.count_ops(lambda: [x[i].mul(2) for i in range(bs)])
    assert looped(4)[0] != looped(8)[0]
    n, by, syncs = bench.count_ops(lambda: torch.randn(3).sum().item())
    assert 'aten::_local_scalar_dense' in syncs

@pytest.mark.cuda
@pytest.mark.parametrize('op', ['mixup', 'cutmix', 'cutmixup', 'cutout'])
@pytest.mark.parametrize('mode', ['elem', 'batch'])
def test_before_batch_no_device_sync_cuda(bench, op, mode):
    "On a GPU, our `before_batch` runs under `torch.cuda.set_sync_debug_mode('error')`"
    assert bench.cuda_sync_check(op, mode) == 'ok'

@pytest.mark.slow
def test_fit_overhead_runs(bench, one_thread):
    "The end-to-end part runs: fit(1) of the main command's learner with and without an augmentation"
    torch.set_num_threads(1)
    rows = bench.fit_overhead(['none', 'mixup'], reps=1, n_train=64, n_valid=64)
    assert [r['aug'] for r in rows] == ['none', 'mixup'] and rows[0]['fit_vs_none'] == 1. and rows[0]['cb_s'] == 0.
    assert rows[1]['cb_s'] > 0 and 0 < rows[1]['cb_share_of_train'] < 1
