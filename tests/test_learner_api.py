"The callbacks in fastai's real training loop (tiny synthetic images): one-liners, validation untouched, exceptions, export."
import copy, io, zipfile
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.learner import Learner, load_learner
from fastai.callback.core import Callback
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, MixAugCallback
from helpers import (one_thread, seeded, ONE_LINERS,  # noqa: F401 (autouse fixtures: one torch thread, a seeded RNG)
                     image_dls, make_learner, tiny_cnn, quiet_fit, quiet_validate, quiet_preds, params, same_params, same_cbs,
                     Raise, RaiseInForward, RaisingLoss)

AUGS = ONE_LINERS
def add(learn, aug, **kw):
    "`learn.<aug>(**kw)`; Manifold Mixup after the tiny CNN's BatchNorm (a plain Sequential has no stages it knows)"
    if aug == 'manifold_mixup': kw['modules'] = [next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d))]
    return getattr(learn, aug)(**kw)


@pytest.fixture(scope='module')
def dls(): return image_dls()


def _clean_twin(learn):
    "A learner without any callback of ours, with `learn`'s weights"
    return make_learner(learn.dls, model=copy.deepcopy(learn.model), loss_func=learn.loss_func)


def _equal_preds(a, b): return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize('aug', AUGS + ['cutmixup+cutout'])
def test_validation_and_get_preds_identical_to_a_learner_without_the_callback(dls, aug):
    learn = make_learner(dls)
    for a in aug.split('+'): add(learn, a, seed=0)
    quiet_fit(learn)                                                # weights trained with the augmentation
    v1, p1, t1 = quiet_validate(learn), quiet_preds(learn), quiet_preds(learn, ds_idx=0)
    clean = _clean_twin(learn)
    v2, p2, t2 = quiet_validate(clean), quiet_preds(clean), quiet_preds(clean, ds_idx=0)
    eq(v1, v2)
    assert _equal_preds(p1, p2) and _equal_preds(t1, t2)           # even on the training set: get_preds never augments


class SpyBefore(Callback):
    "Record each training batch as the DataLoader gives it, before our callbacks (order -1)"
    order = -1
    def __init__(self): self.raw, self.refs = [], []
    def before_batch(self):
        if self.training: self.raw.append(tuple(t.clone() for t in self.xb + self.yb)); self.refs.append(self.xb + self.yb)

class SpyAfter(Callback):
    "Record the prediction and loss of each training batch, after our callbacks (order 2)"
    order = 2
    def __init__(self): self.seen = []
    def after_loss(self):
        if self.training: self.seen.append((self.pred.detach().clone(), self.loss.detach().clone()))


def test_training_loss_in_the_loop_is_the_lam_weighted_loss(dls):
    lf = LabelSmoothingCrossEntropyFlat()
    before, after = SpyBefore(), SpyAfter()
    learn = make_learner(dls, loss_func=lf, cbs=[CutMixUp(seed=3), before, after])
    quiet_fit(learn)
    assert len(before.raw) == 4 and len(after.seen) == 4
    for refs, raw in zip(before.refs, before.raw):                 # the DataLoader's tensors were never written
        assert all(torch.equal(r, t) for r, t in zip(refs, raw))
    replay = CutMixUp(seed=3)
    def ls(pred, t):
        lp = F.log_softmax(pred, 1)
        return -lp.sum(1) * 0.1 / pred.shape[1] + 0.9 * F.nll_loss(lp, t, reduction='none')
    for (x, y), (pred, loss) in zip(before.raw, after.seen):
        prm = replay.draw(x)
        l = (prm.lam * ls(pred, y) + (1 - prm.lam) * ls(pred, y[prm.perm])).mean()
        close(loss, l, eps=1e-5)
    assert learn.loss_func is lf and lf.reduction == 'mean'


EXCS = {'RuntimeError': RuntimeError('boom'), 'KeyboardInterrupt': KeyboardInterrupt()}
SITES = ['after_loss', 'forward', 'per-sample loss']                # 'per-sample loss': inside our mixed-loss computation
CASES = [(a, s, e) for a in AUGS for s in SITES for e in EXCS if not (a == 'cutout' and s == 'per-sample loss')]

@pytest.mark.parametrize('aug,site,exc_name', CASES, ids=['-'.join(c) for c in CASES])
def test_learner_intact_after_an_exception_mid_epoch(dls, aug, site, exc_name):
    exc = EXCS[exc_name]
    lf = RaisingLoss(exc, k=3) if site == 'per-sample loss' else nn.CrossEntropyLoss(label_smoothing=0.1)
    model = RaiseInForward(tiny_cnn(), exc, k=2) if site == 'forward' else tiny_cnn()
    learn = add(make_learner(dls, model=model, loss_func=lf), aug, seed=0)
    cbs = list(learn.cbs)
    extra = [Raise(exc, k=2)] if site == 'after_loss' else []
    with pytest.raises(type(exc)): quiet_fit(learn, cbs=extra)
    assert learn.loss_func is lf and lf.reduction == 'mean'
    if site != 'per-sample loss': eq(lf.label_smoothing, 0.1)
    assert same_cbs(learn.cbs, cbs)
    w = params(learn.model)
    quiet_fit(learn)                                                # trains again...
    assert not same_params(w, params(learn.model))
    eq(quiet_validate(learn), quiet_validate(_clean_twin(learn)))  # ...and validates as a clean learner does


def test_lr_find_then_fit_twice(dls):
    lf = nn.CrossEntropyLoss()
    learn = make_learner(dls, loss_func=lf).cutmixup(seed=0).cutout(length=3, seed=0)
    cbs = list(learn.cbs)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=6, show_plot=False)
    assert learn.loss_func is lf and lf.reduction == 'mean' and same_cbs(learn.cbs, cbs)
    quiet_fit(learn); quiet_fit(learn)
    assert learn.loss_func is lf and lf.reduction == 'mean'


def test_seeded_training_reproducible(dls):
    def train(seed):
        learn = make_learner(dls).cutmixup(seed=seed).cutout(length=3, seed=seed)
        quiet_fit(learn)
        return params(learn.model)
    a, b, c = train(1), train(1), train(2)
    assert same_params(a, b)
    assert not same_params(a, c)


def test_one_liners_chain_replace_and_return_the_learner(dls):
    learn = make_learner(dls)
    n0 = len(learn.cbs)
    assert learn.mixup() is learn
    assert learn.mixup(alpha=0.2, p=0.5, seed=3) is learn          # replaces, never stacks
    ours = [c for c in learn.cbs if isinstance(c, MixAugCallback)]
    eq(len(ours), 1); assert isinstance(learn.mix_up, MixUp)
    eq((learn.mix_up.alpha, learn.mix_up.p, learn.mix_up.seed), (0.2, 0.5, 3))
    learn.remove_mixaug()
    assert learn.cutmix(alpha=0.5).cutout(n_holes=2, length=3) is learn
    assert learn.cutout(n_holes=3, length=2) is learn
    eq(sorted(type(c).__name__ for c in learn.cbs if isinstance(c, MixAugCallback)), ['CutMix', 'Cutout'])
    eq((learn.cut_mix.alpha, learn.cutout_cb.n_holes, learn.cutout_cb.length), (0.5, 3, 2))
    assert callable(learn.cutout) and learn.cutout.__func__ is Learner.cutout   # the method is not shadowed
    assert learn.remove_mixaug() is learn
    eq(len(learn.cbs), n0)
    learn.cutmixup(mixup_alpha=0.3, cutmix_alpha=0.7, switch_prob=0.2)
    eq((learn.cut_mix_up.mixup_alpha, learn.cut_mix_up.cutmix_alpha, learn.cut_mix_up.switch_prob), (0.3, 0.7, 0.2))
    quiet_fit(learn)
    assert learn.cut_mix_up in learn.cbs


@pytest.mark.parametrize('pair', [('mixup', 'cutmix'), ('cutmix', 'cutmixup'), ('mixup', 'cutmixup')])
def test_two_mixing_callbacks_refused_at_fit_start_learner_unchanged(dls, pair):
    lf = nn.CrossEntropyLoss()
    learn = make_learner(dls, loss_func=lf)
    for a in pair: getattr(learn, a)()
    learn.cutout()                                                  # Cutout combines with any mixer: not the problem
    cbs, w = list(learn.cbs), params(learn.model)
    with pytest.raises(ValueError, match='use RandomMix'): quiet_fit(learn)
    assert same_cbs(learn.cbs, cbs)
    assert learn.loss_func is lf and lf.reduction == 'mean'
    assert same_params(w, params(learn.model))                      # nothing trained
    learn.remove_cb([c for c in learn.cbs if type(c).__name__ == {'mixup': 'MixUp', 'cutmix': 'CutMix'}[pair[0]]][0])
    quiet_fit(learn)                                                # fine with one mixer
    assert not same_params(w, params(learn.model))


def test_two_mixers_passed_as_cbs_refused(dls):
    learn = make_learner(dls, cbs=[MixUp(), CutMix()])
    with pytest.raises(ValueError, match='cannot run with'): quiet_fit(learn)


def _pickled_text(fname):
    raw = open(fname, 'rb').read()
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            return b''.join(z.read(n) for n in z.namelist() if n.endswith('.pkl'))
    return raw


def test_export_and_load_learner(dls, tmp_path):
    learn = make_learner(dls, path=tmp_path).cutmixup(seed=0).cutout(length=3, seed=0)
    quiet_fit(learn)
    ours = [c for c in learn.cbs if isinstance(c, MixAugCallback)]
    learn.export('exp.pkl')
    assert b'fastai_mixaug' not in _pickled_text(tmp_path/'exp.pkl')  # loads where fastai_mixaug is not installed
    back = load_learner(tmp_path/'exp.pkl')
    eq([c for c in back.cbs if isinstance(c, MixAugCallback)], [])
    eq([c for c in learn.cbs if isinstance(c, MixAugCallback)], ours)   # kept on the learner, same objects
    dl = learn.dls.valid
    with back.no_bar(): pb = back.get_preds(dl=dl)
    with learn.no_bar(): pl = learn.get_preds(dl=dl)
    assert _equal_preds(pb, pl)
    quiet_fit(learn)                                                # the learner trains on after export


@pytest.mark.parametrize('bs', [1, 7])
@pytest.mark.parametrize('aug', AUGS)
def test_full_loop_with_batch_size_1_and_odd(aug, bs):
    learn = add(make_learner(image_dls(n_train=3 * bs, n_valid=bs, bs=bs)), aug, seed=0)
    w = params(learn.model)
    quiet_fit(learn)
    assert not same_params(w, params(learn.model))
    assert all(torch.isfinite(torch.tensor(v)) for v in learn.recorder.values[-1])


def test_cutout_passed_in_cbs_does_not_shadow_the_method(dls):
    cb = Cutout(length=3)
    learn = make_learner(dls, cbs=cb)
    assert learn.cutout_cb is cb and learn.cutout.__func__ is Learner.cutout
    learn.cutout(length=2)                                          # replaces the one given in cbs
    eq([c.length for c in learn.cbs if isinstance(c, Cutout)], [2])
    assert learn.cutout.__func__ is Learner.cutout
