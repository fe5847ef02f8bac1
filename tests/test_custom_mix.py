"A mix of one's own, written to the public contract (params, sample, MixParams; add_mixaug), works like the built-in ones: one-liner, fit, show_mix_batch, the CLI's learner, RandomMix."
import pytest, torch, torch.nn as nn
from fastai.learner import Learner
from fastai.data.core import Datasets
from fastai_mixaug.all import MixCallback, MixParams, RandomMix, MixUp, MIXAUGS, add_mixaug, mix_batch, check_prob, sched_value
from helpers import one_thread, seeded  # noqa: F401 (autouse fixtures)


class HalfMix(MixCallback):
    "A test mix: paste the partner's first half along the last dim, with probability `share` (or a schedule) per sample"
    def __init__(self, share:float=1., p=1., mode='elem', mix_target='auto', seed=None, off_last=None):
        super().__init__(p, mode, mix_target, seed, off_last)
        self.share = check_prob(share, 'share')
    def params(self, pct): return dict(share=sched_value(self.share, pct, 'share', 0., 1.))
    def sample(self, x, p, mode='elem', generator=None, perm=None, rows=None, share=1.):
        sp, dev = self._spatial(x), x.device
        n = x.shape[0] if perm is None else perm.shape[0]
        if perm is None: perm = torch.randperm(n, device=dev, generator=generator)
        on = torch.rand(n if mode == 'elem' else 1, device=dev, generator=generator).lt(p * share).expand(n)
        hi = torch.tensor([*sp[:-1], sp[-1] // 2], device=dev).mul(on.unsqueeze(1))
        return MixParams(perm, 1 - .5 * on.float() * (sp[-1] // 2 * 2 / sp[-1]), on, torch.zeros_like(hi), hi, sp, blend=False)

@pytest.fixture(autouse=True, scope='module')
def _halfmix():
    "HalfMix gets its one-liner for this module's tests only: the registry and Learner are as they were afterwards (later tests, notebooks)"
    import fastai_mixaug.learner as lib
    add_mixaug('halfmix', HalfMix)
    yield
    lib.MIXAUGS.pop('halfmix', None); lib._ADDED.discard('halfmix')
    if hasattr(Learner, 'halfmix'): delattr(Learner, 'halfmix')


def _dls(n=32, bs=8):
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3
    return Datasets(range(n), [[lambda i: xs[i]], [lambda i: ys[i]]], splits=[range(24), range(24, n)]).dataloaders(bs=bs)

def _learner(): return Learner(_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=nn.CrossEntropyLoss())


def test_the_draw_is_applied_exactly():
    x = torch.randn(8, 3, 8, 8)
    prm = HalfMix(seed=0).draw(x)
    (out,), *_ = mix_batch((x,), (), prm)
    assert torch.equal(out[..., :4], x[prm.perm][..., :4]) and torch.equal(out[..., 4:], x[..., 4:])
    assert (prm.lam == .5).all()

def test_one_liner_listed_and_refusals():
    learn = _learner().halfmix(share=.5, seed=1)
    cb, = [c for c in learn.cbs if isinstance(c, MixCallback)]
    assert type(cb) is HalfMix and cb.share == .5 and MIXAUGS['halfmix'] is HalfMix
    with pytest.raises(ValueError, match='`share`'): learn.halfmix(share=2)
    with pytest.raises(ValueError, match="`name` 'mixup' is taken"): add_mixaug('mixup', HalfMix)
    with pytest.raises(TypeError, match='`cls` must be a MixAugCallback'): add_mixaug('other', object)

def test_fits_validation_untouched_and_show_mix_batch():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import fastai_mixaug.show  # noqa: F401 (learn.show_mix_batch)
    learn = _learner().halfmix(seed=0)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    preds, _ = learn.get_preds(dl=learn.dls.valid)
    with learn.removed_cbs(learn.cbs[-1:]): plain, _ = learn.get_preds(dl=learn.dls.valid)
    assert torch.equal(preds, plain)                                              # validation as without the mix
    plt.close('all')
    xb, yb = learn.show_mix_batch(n=4)
    assert len(plt.gcf().axes) == 4
    plt.close('all')

def test_in_the_clis_learner_and_in_randommix():
    from fastai_mixaug.cli import make_learner
    learn = make_learner(_dls(), 'halfmix:share=0.5', 0)
    assert any(type(c) is HalfMix and c.share == .5 for c in learn.cbs)
    x = torch.randn(16, 3, 8, 8)
    prm = RandomMix([MixUp(), HalfMix()], seed=0).draw(x)
    (out,), *_ = mix_batch((x,), (), prm)
    half = prm.which == 1
    assert half.any() and torch.equal(out[half][..., :4], x[prm.perm][half][..., :4]) and torch.equal(out[half][..., 4:], x[half][..., 4:])
