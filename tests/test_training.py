"The callbacks inside fastai's training loop on real images (MNIST-5k): the learner is never left changed."
import os, subprocess, sys, textwrap
import pytest, torch, torch.nn as nn
from fastai.learner import Learner, load_learner
from fastai.callback.core import Callback, CancelEpochException
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, MixAugCallback
from fastai_mixaug.data import mnist_dls
from fastai_mixaug.cli import small_cnn
from helpers import ONE_LINERS

KW = {'manifold_mixup': dict(modules=['0', '1'])}   # the small CNN: after its first two conv layers (a plain Sequential has no stages it knows)


@pytest.fixture(scope='module')
def dls():
    return mnist_dls(bs=64, n_train=320, n_valid=200)


def make(dls, aug=None, loss_func=None, **kw):
    set_seed(0, reproducible=True)
    learn = Learner(dls, small_cnn(8), loss_func=loss_func or nn.CrossEntropyLoss(), metrics=accuracy)
    return getattr(learn, aug)(**{**KW.get(aug, {}), **kw}) if aug else learn


def quiet_fit(learn, n=1, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, 1e-2, **kw)


@pytest.mark.parametrize('aug', ONE_LINERS)
def test_validation_and_get_preds_identical_to_no_plugin(dls, aug):
    learn = make(dls, aug)
    quiet_fit(learn)                                                   # weights trained with the augmentation
    with learn.no_bar(): v1, p1 = learn.validate(), learn.get_preds(with_loss=True)
    learn.remove_mixaug()
    with learn.no_bar(): v2, p2 = learn.validate(), learn.get_preds(with_loss=True)
    assert v1 == v2
    for a, b in zip(p1, p2): assert torch.equal(a, b)


def _cbs(learn):
    "The learner's callbacks: ours by identity, fastai's by type (`no_bar` re-creates the progress callback)"
    return sorted(type(c).__name__ for c in learn.cbs), [id(c) for c in learn.cbs if isinstance(c, MixAugCallback)]


class Boom(Callback):
    "Raise `exc` in `after_loss` of the `k`-th training batch"
    def __init__(self, exc, k=3): self.exc, self.k, self.i = exc, k, 0
    def after_loss(self):
        if not self.training: return
        self.i += 1
        if self.i == self.k: raise self.exc


@pytest.mark.parametrize('exc', [RuntimeError('boom'), KeyboardInterrupt()], ids=['RuntimeError', 'KeyboardInterrupt'])
@pytest.mark.parametrize('aug', ONE_LINERS)
def test_learner_intact_after_exception_mid_epoch(dls, aug, exc):
    lf = nn.CrossEntropyLoss(label_smoothing=0.1)
    learn = make(dls, aug, loss_func=lf)
    cbs = _cbs(learn)
    with pytest.raises(type(exc)): quiet_fit(learn, cbs=Boom(exc))
    assert learn.loss_func is lf and lf.reduction == 'mean' and lf.label_smoothing == 0.1
    assert _cbs(learn) == cbs
    quiet_fit(learn)                                                   # trains again
    with learn.no_bar(): v = learn.validate()
    learn.remove_mixaug()
    with learn.no_bar(): assert learn.validate() == v                 # and validates as without the plugin


def test_lr_find_then_fit_twice(dls):
    learn = make(dls, 'cutmixup')
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=10, show_plot=False)
    quiet_fit(learn); quiet_fit(learn)
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)


def test_two_mixers_refused_at_fit_start_learner_unchanged(dls):
    learn = make(dls, 'mixup').cutmix().cutout()
    w = [p.detach().clone() for p in learn.model.parameters()]
    lf, cbs = learn.loss_func, _cbs(learn)
    with pytest.raises(ValueError, match='use RandomMix'): quiet_fit(learn)
    assert learn.loss_func is lf and _cbs(learn) == cbs
    assert all(torch.equal(a, b) for a, b in zip(w, learn.model.parameters()))
    learn.remove_cb(MixUp); quiet_fit(learn)                           # one mixer + Cutout: fine


def test_one_liners_chain_replace_and_remove(dls):
    learn = make(dls)
    assert learn.cutout(length=4).mixup(0.2) is learn
    learn.mixup(0.3).cutout(n_holes=2)                                 # replace, never stack
    mine = [c for c in learn.cbs if isinstance(c, MixAugCallback)]
    assert sorted(type(c).__name__ for c in mine) == ['Cutout', 'MixUp']
    assert learn.mix_up.alpha == 0.3 and learn.cutout_cb.n_holes == 2 and callable(learn.cutout)
    learn.remove_mixaug()
    assert not [c for c in learn.cbs if isinstance(c, MixAugCallback)]


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.long
def test_export_loads_where_fastai_mixaug_is_not_importable(dls, tmp_path):
    learn = make(dls, 'cutmixup').cutout(length=0.25)
    learn.path = tmp_path
    quiet_fit(learn)
    learn.export('model.pkl')
    assert len([c for c in learn.cbs if isinstance(c, MixAugCallback)]) == 2   # kept on the live learner
    x = dls.valid_ds[0][0]
    with learn.no_bar(): want = learn.predict(x)[2]
    import numpy as np
    np.save(tmp_path/'img.npy', np.array(x))
    code = textwrap.dedent(f"""
        import sys, importlib.abc, numpy as np, torch
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] == 'fastai_mixaug': raise ImportError('fastai_mixaug is blocked')
        sys.meta_path.insert(0, Block())
        from fastai.vision.all import load_learner, PILImageBW
        learn = load_learner({str(tmp_path/'model.pkl')!r})
        assert 'fastai_mixaug' not in sys.modules
        with learn.no_bar(): p = learn.predict(PILImageBW.create(np.load({str(tmp_path/'img.npy')!r})))[2]
        torch.save(p, {str(tmp_path/'p.pt')!r})
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path/'p.pt'), want, atol=1e-6)


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.long
def test_training_with_each_augmentation_learns(dls):
    for aug in ONE_LINERS:
        learn = make(dls, aug)
        with learn.no_bar(): before = learn.validate()[0]
        quiet_fit(learn, 4)
        with learn.no_bar(): after = learn.validate()[0]
        assert after < before, (aug, before, after)                     # the validation loss goes down
