"CIFAR-10 photos (#17): the loader on fastai's layout (a generated folder of .png, the shared .tgz), the crop and flip per sample, bad paths, calibration, and short runs of both commands."
import csv, io, math, os, shutil, subprocess, tarfile, warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
import numpy as np
import pytest, torch
import torch.nn.functional as F
from PIL import Image
from fastai_mixaug.data import (CIFAR_STATS, DataPathError, PadCropFlip, balanced_subset, cifar_arrays, cifar_dls, cifar_folder,
                                crop_flip, sample_crop_flip)
from fastai_mixaug.train import ece, evaluate, load_data, resnet20

SHARED = Path(__file__).resolve().parents[2]/'shared'/'data'/'cifar10.tgz'   # the project's copy, beside the checkout; CI has it
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=f"no {SHARED}")

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    "Archives unpack into a cache folder of this test session, never the user's"
    monkeypatch.setenv('FASTAI_MIXAUG_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))

def fake_cifar(root, n_train=4, n_test=2, classes=('cat', 'dog', 'frog'), ext='.png', size=32, seed=0):
    "A tiny folder of random photos in fastai's CIFAR layout; returns {(split, class, i): uint8 array}"
    rng, arrays = np.random.RandomState(seed), {}
    for split, n in (('train', n_train), ('test', n_test)):
        for c in classes:
            (root/split/c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a).save(root/split/c/f'{i:04d}{ext}')
                arrays[split, c, i] = a
    return arrays

def test_png_folder_exact(tmp_path):
    "fastai's layout with .png: every photo comes back bit for bit, labelled by its folder, from the folder or the one above it"
    arrays = fake_cifar(tmp_path/'cifar10')
    for path in (tmp_path, tmp_path/'cifar10', str(tmp_path/'cifar10')):
        Xt, yt, Xv, yv, classes = cifar_arrays(path)
        assert classes == ['cat', 'dog', 'frog'] and Xt.dtype == torch.uint8 and Xt.shape == (12, 3, 32, 32) and Xv.shape == (6, 3, 32, 32)
        got = sorted((classes[y], bytes(x.permute(1, 2, 0).numpy())) for x, y in zip(Xv, yv.tolist()))
        want = sorted((c, bytes(a)) for (s, c, i), a in arrays.items() if s == 'test')
        assert got == want

def test_tgz_unpacked_once(tmp_path):
    "A .tgz of the layout is unpacked once into the cache folder and read the same as the folder"
    fake_cifar(tmp_path/'src'/'cifar10')
    arc = tmp_path/'cifar10.tgz'
    with tarfile.open(arc, 'w:gz') as tf: tf.add(tmp_path/'src'/'cifar10', arcname='cifar10')
    a = cifar_arrays(arc)
    root = cifar_folder(arc)
    assert root.name == 'cifar10' and Path(os.environ['FASTAI_MIXAUG_CACHE']) in root.parents
    mtime = root.stat().st_mtime_ns
    assert cifar_folder(arc) == root and root.stat().st_mtime_ns == mtime   # not unpacked again
    b = cifar_arrays(tmp_path/'src')
    for u, v in zip(a[:4], b[:4]): assert torch.equal(u, v)

def test_balanced_subset():
    "n_train: the same count per class (the first classes one more), nested (a smaller subset is part of a larger one)"
    y = np.repeat(np.arange(10), 50)
    for n in (10, 35, 100, 500):
        k = balanced_subset(y, n)
        assert len(k) == len(set(k.tolist())) == n
        counts = np.bincount(y[k], minlength=10)
        assert counts.max() - counts.min() <= 1 and list(counts) == sorted(counts, reverse=True)
    assert set(balanced_subset(y, 100).tolist()) <= set(balanced_subset(y, 200).tolist())
    assert (balanced_subset(y, None) == np.arange(500)).all()
    with pytest.raises(ValueError, match='between 1 and 500'): balanced_subset(y, 501)

def test_crop_flip_exact_per_sample():
    "Each sample is its own 4-pixel zero-padded crop, flipped horizontally where drawn, in one gather; the batch is left alone"
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    x0 = x.clone()
    oy, ox, flip = sample_crop_flip(64, 4)
    assert oy.min() >= 0 and oy.max() <= 8 and ox.min() >= 0 and ox.max() <= 8 and 0 < flip.sum() < 64
    out = crop_flip(x, oy, ox, flip)
    xp = F.pad(x, (4, 4, 4, 4))
    for i in range(64):
        want = xp[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        assert torch.equal(out[i], want.flip(-1) if flip[i] else want), i
    assert torch.equal(x, x0) and out.is_contiguous(memory_format=torch.channels_last)
    # every offset and both flips are drawn, about uniformly
    oy, ox, flip = sample_crop_flip(9000, 4, generator=torch.Generator().manual_seed(1))
    assert np.bincount(oy.numpy(), minlength=9).min() > 850 and abs(flip.float().mean() - .5) < .02

def test_dls_training_only_and_normalised(tmp_path):
    "The crop and flip run on training batches only; validation batches are the photos, normalised with CIFAR's stats"
    fake_cifar(tmp_path/'cifar10', n_train=8, n_test=4)
    dls = cifar_dls(tmp_path, bs=6)
    assert dls.vocab == ['cat', 'dog', 'frog'] and (len(dls.train_ds), len(dls.valid_ds)) == (24, 12)
    assert any(isinstance(t, PadCropFlip) for t in dls.train.after_batch.fs)
    xb, yb = dls.valid.one_batch()
    Xt, yt, Xv, yv, _ = cifar_arrays(tmp_path)
    m, s = torch.tensor(CIFAR_STATS[0])[:, None, None], torch.tensor(CIFAR_STATS[1])[:, None, None]
    torch.testing.assert_close(xb.as_subclass(torch.Tensor), (Xv[:6].float() / 255 - m) / s)
    assert torch.equal(yb.as_subclass(torch.Tensor), yv[:6])
    sub = cifar_dls(tmp_path, n_train=9, n_valid=6, bs=3)
    assert np.bincount([int(y) for y in sub.valid_ds.tls[1]]).tolist() == [2, 2, 2]
    noaug = cifar_dls(tmp_path, bs=6, augment=False)
    assert not any(isinstance(t, PadCropFlip) for t in noaug.train.after_batch.fs)

def test_commands_validate_on_cifar_dls_photos(tmp_path):
    "The commands validate each epoch on the photos `cifar_dls(n_valid=...)` gives, in its order, and evaluate on all test photos"
    fake_cifar(tmp_path/'cifar10', n_train=8, n_test=4)
    dls, final = load_data('cifar10', n_train=9, bs=3, path=tmp_path, n_valid=6)
    ref = cifar_dls(tmp_path, n_train=9, n_valid=6, bs=3)
    cat = lambda dl: [torch.cat([b[i].as_subclass(torch.Tensor) for b in dl]) for i in (0, 1)]
    for a, b in zip(cat(dls.valid), cat(ref.valid)): assert torch.equal(a, b)
    assert len(dls.valid_ds) == 6 and len(final.dataset) == 12

def test_study_resume_from_other_photos(tmp_path):
    "A study resumed with another --data-path warns that the finished runs came from other photos; the header names the path"
    from fastai_mixaug.study import main
    for d in ('a', 'b'): fake_cifar(tmp_path/d, n_train=4, n_test=2)
    out = tmp_path/'out'
    run = lambda d, seeds: main(['--data', 'cifar10', '--data-path', str(tmp_path/d), '--sizes', '6', '--bs', '3', '--epochs', '1',
                                 '--augs', 'none', '--seeds', seeds, '--out', str(out), '--quiet'])
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err): run('a', '0')
    assert (out/'data_path.txt').read_text() == f"{tmp_path/'a'}\n" and 'warning' not in err.getvalue()
    assert f"training photos in {tmp_path/'a'} (pad-4 crop and flip)" in (out/'study.md').read_text()
    with redirect_stdout(io.StringIO()), redirect_stderr(err): run('b', '0,1')
    assert f"were made from the photos in {tmp_path/'a'}, not {tmp_path/'b'}: they are used, not rerun" in ' '.join(err.getvalue().split())
    assert (out/'data_path.txt').read_text() == f"{tmp_path/'a'}\n"   # the first runs' photos stay on record

BAD_PATHS = {
    'missing': (lambda d: d/'nope', "does not exist"),
    'other layout': (lambda d: (d/'photos').mkdir() or d/'photos', "has no train/ and test/ folders"),
    'not an archive': (lambda d: (d/'x.tgz').write_text('not a tar') and d/'x.tgz', "is a file but not a tar archive"),
}

@pytest.mark.parametrize('case', BAD_PATHS)
def test_bad_paths(tmp_path, case):
    "A bad path: a DataPathError (a ValueError and a FileNotFoundError) naming the path and the layout expected"
    make, msg = BAD_PATHS[case]
    p = make(tmp_path)
    with pytest.raises(DataPathError, match=msg) as e: cifar_dls(p)
    assert isinstance(e.value, ValueError) and isinstance(e.value, FileNotFoundError)
    assert str(p) in str(e.value) and "train/<class>/*.png" in str(e.value)

def test_corrupt_archive_and_photo(tmp_path):
    "A truncated .tgz and a photo that is not an image: clear errors naming the file"
    fake_cifar(tmp_path/'src'/'cifar10')
    arc = tmp_path/'c.tgz'
    with tarfile.open(arc, 'w:gz') as tf: tf.add(tmp_path/'src'/'cifar10', arcname='cifar10')
    bad = tmp_path/'cut.tgz'; bad.write_bytes(arc.read_bytes()[:len(arc.read_bytes()) // 2])
    with pytest.raises(DataPathError, match='cannot unpack') as e: cifar_dls(bad)
    assert str(bad) in str(e.value)
    assert not list(Path(os.environ['FASTAI_MIXAUG_CACHE']).glob('cut-*'))   # nothing half-unpacked left behind
    (tmp_path/'src'/'cifar10'/'test'/'dog'/'0001.png').write_bytes(b'garbage')
    with pytest.raises(DataPathError, match=r"cannot read .*0001\.png"): cifar_dls(tmp_path/'src')
    with pytest.raises(TypeError, match='`path` must be'): cifar_dls(3)
    with pytest.raises(ValueError, match='`n_train` must be'): cifar_dls(tmp_path/'src', n_train=0)

def test_mismatched_classes(tmp_path):
    fake_cifar(tmp_path/'cifar10')
    shutil.rmtree(tmp_path/'cifar10'/'test'/'frog')
    with pytest.raises(DataPathError, match='same class folders'): cifar_dls(tmp_path)

def test_loader_edge_cases(tmp_path):
    "Hidden folders skipped; numpy integers taken; no training batch, train/test sizes, an unwritable cache: clear errors naming the argument"
    fake_cifar(tmp_path/'cifar10')
    (tmp_path/'cifar10'/'train'/'.ipynb_checkpoints').mkdir(); (tmp_path/'cifar10'/'test'/'__MACOSX').mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path/'cifar10'/'train'/'cat'/'._0000.png')
    dls = cifar_dls(tmp_path, n_train=np.int64(6), n_valid=np.int32(3), bs=np.int64(2))
    assert dls.vocab == ['cat', 'dog', 'frog'] and (len(dls.train_ds), len(dls.valid_ds), dls.bs) == (6, 3, 2)
    for kw, msg in ((dict(n_train=2.), '`n_train` must be a positive int'), (dict(bs=True), '`bs` must be a positive int'),
                    (dict(n_train=13, bs=2), r"`n_train`: .*train' holds 12 photos, fewer than the 13")):
        with pytest.raises(ValueError, match=msg): cifar_dls(tmp_path, **kw)
    for kw, n in ((dict(n_train=6, bs=8), 6), (dict(bs=13), 12)):   # a valid set, but fit would train nothing: a warning
        with pytest.warns(UserWarning, match=f'`bs`: {n} training photos are fewer than one batch of'): d = cifar_dls(tmp_path, **kw)
        assert len(d.train_ds) == n and len(d.train) == 0
    with warnings.catch_warnings():   # the check follows fastai's drop_last
        warnings.simplefilter('error'); assert len(cifar_dls(tmp_path, bs=13, drop_last=False).train) == 1
    fake_cifar(tmp_path/'big'/'cifar10', size=40)
    shutil.rmtree(tmp_path/'big'/'cifar10'/'test'); shutil.copytree(tmp_path/'cifar10'/'test', tmp_path/'big'/'cifar10'/'test')
    with pytest.raises(DataPathError, match='the train/ photos are 40×40, the test/ ones 32×32'): cifar_dls(tmp_path/'big')
    arc = tmp_path/'c.tgz'
    with tarfile.open(arc, 'w:gz') as tf: tf.add(tmp_path/'cifar10', arcname='cifar10')
    (tmp_path/'afile').write_text('')
    with pytest.raises(DataPathError, match=r"`cache`: cannot create a folder in .*afile.*FASTAI_MIXAUG_CACHE"): cifar_dls(arc, cache=tmp_path/'afile'/'c')

def test_export_and_predict(tmp_path):
    "A learner on these DataLoaders exports without the photos, and predicts from a photo's file, a PIL image, an array or a tensor alike"
    from fastai.learner import Learner, load_learner
    import fastai_mixaug.all  # noqa: F401  (the one-liners)
    fake_cifar(tmp_path/'cifar10', n_train=8, n_test=4)
    dls = cifar_dls(tmp_path, bs=6)
    learn = Learner(dls, resnet20(n_out=3), path=tmp_path).cutmix()
    learn.fit(1)
    learn.export('exp.pkl')
    l2 = load_learner(tmp_path/'exp.pkl')
    assert len(l2.dls.train_ds) == len(l2.dls.valid_ds) == 0   # no photo in the export
    f = tmp_path/'cifar10'/'test'/'dog'/'0001.png'
    a = np.array(Image.open(f))
    preds = [l2.predict(o) for o in (f, str(f), Image.open(f), a, torch.from_numpy(a).permute(2, 0, 1))]
    for lbl, i, pr in preds: assert lbl == preds[0][0] and lbl in ('cat', 'dog', 'frog') and torch.allclose(pr, preds[0][2])
    p, _ = l2.get_preds(dl=l2.dls.test_dl([f, f]))
    torch.testing.assert_close(p[0], preds[0][2])
    with pytest.raises(TypeError, match='expected a photo'): l2.predict(np.zeros(3))

def test_cli_sizes_against_folder(tmp_path):
    "The commands' training-set sizes are checked against what the folder holds: defaults capped, too many a usage error naming the flag"
    import argparse
    from fastai_mixaug.train import check_data
    fake_cifar(tmp_path/'cifar10')   # 12 training photos
    p = argparse.ArgumentParser(prog='t')
    ns = lambda **kw: argparse.Namespace(**dict(data='cifar10', data_path=tmp_path, model=None, bs=4, n_train=None, sizes=None) | kw)
    a = ns(); check_data(p, a); assert (a.n_train, a.model, a.data_path) == (12, 'resnet20', tmp_path/'cifar10')
    a = ns(); check_data(p, a, 'sizes', default=[5000]); assert a.sizes == [12]
    for a, flag in ((ns(n_train=13), '--n-train'), (ns(sizes=[4, 20]), '--sizes')):
        err = io.StringIO()
        with pytest.raises(SystemExit), redirect_stderr(err): check_data(p, a, 'n_train' if flag == '--n-train' else 'sizes')
        assert f"argument {flag}: at most 12 for '{tmp_path/'cifar10'}' (12 training photos), got" in err.getvalue()
    err = io.StringIO()
    with pytest.raises(SystemExit), redirect_stderr(err): check_data(p, ns(bs=128))
    assert 'argument --n-train: 12 training images is fewer than one batch (--bs 128)' in err.getvalue()

def test_ece_by_hand():
    "ECE: 15 equal-width bins of the top probability, |accuracy − confidence| weighted by the bin's share"
    p = torch.tensor([[.9, .1], [.8, .2], [.3, .7], [.6, .4], [.95, .05]])
    t = torch.tensor([0, 1, 1, 0, 0])
    # each sample in a bin of its own: .95 in (14/15, 1], .9 in (13/15, 14/15], .8, .7 and .6 in theirs
    want = (abs(1 - .9) + abs(0 - .8) + abs(1 - .7) + abs(1 - .6) + abs(1 - .95)) / 5
    assert ece(p, t) == pytest.approx(want, abs=1e-6)
    p = torch.tensor([[.61, .39], [.65, .35], [.62, .38]])   # one bin (9/15, 10/15]: accuracy 2/3, confidence .6267
    assert ece(p, torch.tensor([0, 0, 1])) == pytest.approx(abs(2 / 3 - (.61 + .65 + .62) / 3), abs=1e-6)
    assert ece(torch.eye(4), torch.arange(4)) == 0.

def test_resnet20():
    "He et al.'s CIFAR ResNet-20: 0.27M parameters, three stages of three blocks (16/32/64 channels), channels_last"
    m = resnet20()
    assert sum(p.numel() for p in m.parameters()) == 272_474
    assert [len(m[i]) for i in (1, 2, 3)] == [3, 3, 3]
    assert m[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert m.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

@pytest.mark.long
@needs_shared
def test_shared_archive():
    "The project's CIFAR-10 archive: 50,000 / 10,000 photos of 10 classes; a balanced subset of each"
    Xt, yt, Xv, yv, classes = cifar_arrays(SHARED, n_train=500, n_valid=200)
    assert classes == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    assert Xt.shape == (500, 3, 32, 32) and np.bincount(yt.numpy()).tolist() == [50] * 10 and np.bincount(yv.numpy()).tolist() == [20] * 10
    dls = cifar_dls(SHARED, n_train=256, bs=64)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (256, 10000)

def _read(p): return list(csv.DictReader(open(p)))

@pytest.mark.long
@needs_shared
def test_main_command_on_photos(tmp_path):
    "The issue's command, shortened: results.csv has NLL and ECE columns, the final numbers are on all 10,000 test photos"
    out = tmp_path/'out'
    exe = shutil.which('fastai-mixaug')
    r = subprocess.run([exe, '--data', 'cifar10', '--data-path', str(SHARED), '--n-train', '256', '--epochs', '1', '--seeds', '0',
                        '--augs', 'none,cutmix', '--out', str(out), '--no-show'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = _read(out/'results.csv')
    assert [x['aug'] for x in res] == ['none', 'cutmix'] and {'ece', 'nll', 'ece_vs_none'} <= set(res[0])
    assert all(0 <= float(x['ece']) < 1 and float(x['nll']) > 0 for x in res)
    assert 'CIFAR-10: 256 train images / 2,000 valid images after each epoch, all 10,000 at the end' in r.stdout
    assert 'run 2 of 2' in r.stdout and 'left' in r.stdout
    assert '\r' not in r.stdout   # not a terminal: plain lines, no progress bars
    assert 'epoch 1/1: train_loss' in r.stdout

@pytest.mark.long
@needs_shared
def test_study_on_photos(tmp_path):
    "The study on photos: runs.csv with data, NLL and ECE columns; resuming with --data mnist is refused"
    from fastai_mixaug.study import main, RUN_COLS
    out = tmp_path/'study'
    argv = ['--data', 'cifar10', '--data-path', str(SHARED), '--sizes', '256', '--epochs', '1', '--augs', 'none,mixup', '--seeds', '0', '--out', str(out), '--quiet']
    buf = io.StringIO()
    with redirect_stdout(buf): main(argv)
    runs = _read(out/'runs.csv')
    assert list(runs[0]) == list(RUN_COLS) and [(x['aug'], x['data'], x['model'], x['bs']) for x in runs] == [('none', 'cifar10', 'resnet20', '128'), ('mixup', 'cifar10', 'resnet20', '128')]
    assert '[1/2]' not in buf.getvalue()   # --quiet: no line per run
    assert (out/'vs_none.png').read_bytes()[:4] == b'\x89PNG' and 'ECE' in (out/'study.md').read_text()
    with pytest.raises(SystemExit): main(['--sizes', '256', '--epochs', '1', '--augs', 'none,mixup', '--seeds', '0', '--out', str(out)])
