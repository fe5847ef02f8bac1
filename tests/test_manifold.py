"ManifoldMixUp: where it mixes, the exact hidden mix and loss, hooks that never outlive a batch, and the learner left as it was."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
import fastai.callback.progress  # noqa: F401 (no_bar)
from fastai_mixaug.all import ManifoldMixUp, MixUp, Cutout, CutMix, Site, hidden_sites, find_sites
from helpers import one_thread, seeded, image_dls  # noqa: F401 (autouse fixtures)

gen = lambda s: torch.Generator().manual_seed(s)


class Net(nn.Module):
    "A small CNN with named stages; `boom` makes one of its modules raise (fault injection)"
    def __init__(self, c=4, boom=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.s1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, c))
        self.boom = boom
    def forward(self, x):
        x = self.s1(self.stem(x))
        if self.boom == 's2': raise RuntimeError('boom in the forward pass')
        if self.boom == 'kbd': raise KeyboardInterrupt
        return self.head(self.s2(x))


def dls(bs=8):
    "fastai DataLoaders over synthetic 3×8×8 images, 4 classes"
    return image_dls(n_train=48, n_valid=16, bs=bs)


def hooks(model):
    "Every hook of every module of `model`: (name, kind, handle ids)"
    return [(n, k, tuple(getattr(m, k).keys())) for n, m in model.named_modules()
            for k in ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_forward_hooks_with_kwargs')]


def run_batch(cb, model, xb, yb, loss_func=None):
    "One training batch driven as `Learner.one_batch` does, without the optimiser step"
    learn = Learner(dls(), model, loss_func=loss_func or nn.CrossEntropyLoss(), cbs=cb)
    learn.training, learn.xb, learn.yb = True, xb, yb
    learn('before_batch')
    learn.pred = learn.model(*learn.xb)
    learn('after_pred')
    learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
    learn.loss = learn.loss_grad.clone()
    learn('after_loss')
    return learn


def capture(module):
    "Hooks seeing `module`'s output before and after any other hook (ours, prepended at arm time, runs between)"
    got = {}
    def first(m, a, o): got['clean'] = o.detach().clone()
    def last(m, a, o): got['mixed'] = o.detach().clone()
    return got, first, last


# ------------------------------------------------------------------------------------------------ where
def test_sites_by_architecture():
    from torchvision.models import resnet18
    from fastai.vision.models.xresnet import xresnet18
    from fastai.vision.learner import create_vision_model, create_unet_model
    eq([s.name for s in hidden_sites(resnet18())], ['layer1', 'layer2'])
    eq([s.name for s in hidden_sites(xresnet18())], ['4', '5'])
    eq([s.name for s in hidden_sites(create_vision_model(resnet18, 3, pretrained=False))], ['0.4', '0.5'])
    eq([s.name for s in hidden_sites(create_vision_model(xresnet18, 3, pretrained=False))], ['0.4', '0.5'])
    unet = create_unet_model(resnet18, 3, (32, 32), pretrained=False)
    eq([s.name for s in hidden_sites(unet)], ['layers.0.4', 'layers.0.5'])
    with pytest.raises(ValueError, match='pass `modules=`'): hidden_sites(Net())
    with pytest.raises(ValueError, match='use_nn=True'):
        from fastai.collab import EmbeddingDotBias
        hidden_sites(EmbeddingDotBias(4, 5, 6))


def test_timm_models_use_their_feature_info():
    timm = pytest.importorskip('timm')
    from fastai.vision.learner import create_timm_model
    eq([s.name for s in hidden_sites(timm.create_model('resnet18', pretrained=False))], ['layer1', 'layer2'])
    eq([s.name for s in hidden_sites(timm.create_model('convnext_atto', pretrained=False))], ['stages.0', 'stages.1'])
    m, _ = create_timm_model('resnet18', 3, pretrained=False)                   # what vision_learner('resnet18') builds
    eq([s.name for s in hidden_sites(m)], ['0.model.layer1', '0.model.layer2'])


def test_modules_by_name_or_object_checked():
    m = Net()
    eq(find_sites(m, ['s1', m.s2]), [Site('s1', m.s1), Site('s2', m.s2)])
    with pytest.raises(ValueError, match="'s3' is not a module"): find_sites(m, ['s3'])
    with pytest.raises(ValueError, match='is not a module of the'): find_sites(m, [nn.Linear(2, 2)])
    with pytest.raises(TypeError, match='`modules`'): ManifoldMixUp(modules=[3])
    with pytest.raises(TypeError, match='`modules`'): ManifoldMixUp(modules=[])
    eq(ManifoldMixUp(modules='s1').modules, ['s1'])                             # one name is fine
    learn = Learner(dls(), Net(), loss_func=nn.CrossEntropyLoss(), cbs=ManifoldMixUp(modules=['nope']))
    w = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="'nope' is not a module"):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w, learn.model.parameters()))  # refused before any weight changed


def test_unchoosable_model_asks_for_modules_before_training():
    learn = Learner(dls(), Net(), loss_func=nn.CrossEntropyLoss()).manifold_mixup()
    with pytest.raises(ValueError, match='pass `modules=`'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize('bs', [1, 7, 8])
@pytest.mark.parametrize('mode', ['elem', 'batch'])
def test_hidden_state_leaving_the_module_is_the_lambda_mix(bs, mode):
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(bs, 3, 8, 8), torch.randint(0, 4, (bs,))
    got, first, last = capture(model.s1)
    cb = ManifoldMixUp(modules=['s1'], mode=mode, seed=1)
    learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=cb)
    learn.training, learn.xb, learn.yb = True, (x,), (y,)
    learn('before_batch')
    h0 = model.s1.register_forward_hook(first, prepend=True)                   # runs before ours: the clean state
    h2 = model.s2.register_forward_pre_hook(lambda m, a: got.__setitem__('entering', a[0].detach().clone()))
    learn.pred = model(x)
    learn('after_pred')
    for h in (h0, h2): h.remove()
    prm = cb._prm if cb._prm is not None else None
    assert torch.equal(learn.xb[0], x)                                          # the inputs are not touched
    lam, perm, c = prm.lam, prm.perm, got['clean']
    close(got['entering'], lam.view(-1, 1, 1, 1) * c + (1 - lam.view(-1, 1, 1, 1)) * c[perm], eps=1e-6)
    if mode == 'batch': eq(lam, lam[:1].expand(bs))
    eq(hooks(model), hooks(Net()))                                              # no hook of ours left


@pytest.mark.parametrize('loss', ['ce', 'flat'])
def test_loss_is_the_lambda_weighted_loss_by_hand(loss):
    torch.manual_seed(0)
    model, bs = Net(), 9
    x, y = torch.randn(bs, 3, 8, 8), torch.randint(0, 4, (bs,))
    lf = nn.CrossEntropyLoss(label_smoothing=.1) if loss == 'ce' else CrossEntropyLossFlat()
    cb = ManifoldMixUp(modules=['s1', 's2'], seed=2)
    learn = run_batch(cb, model, (x,), (y,), lf)
    prm = cb._prm
    ce = lambda t: F.cross_entropy(learn.pred, t, reduction='none', label_smoothing=.1 if loss == 'ce' else 0.)
    close(learn.loss_grad, (prm.lam * ce(y) + (1 - prm.lam) * ce(y[prm.perm])).mean(), eps=1e-6)
    assert learn.loss_func is lf and lf.reduction == 'mean'


def test_float_targets_mixed_like_mixup():
    torch.manual_seed(0)
    model, bs = Net(c=3), 6
    x, y = torch.randn(bs, 3, 8, 8), torch.rand(bs, 3)
    cb = ManifoldMixUp(modules=['s2'], seed=3)
    learn = run_batch(cb, model, (x,), (y,), nn.BCEWithLogitsLoss())
    lam = cb._prm.lam[:, None]
    close(learn.yb[0], lam * y + (1 - lam) * y[cb._prm.perm], eps=1e-6)


def test_gradient_reaches_both_samples_of_a_pair():
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(4, 3, 8, 8, requires_grad=True), torch.randint(0, 4, (4,))
    cb = ManifoldMixUp(modules=['s1'], seed=4)
    learn = run_batch(cb, model, (x,), (y,))
    learn.loss_grad.backward()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()


def test_bf16_hidden_states():
    torch.manual_seed(0)
    model = Net().to(torch.bfloat16)
    x, y = torch.randn(5, 3, 8, 8, dtype=torch.bfloat16), torch.randint(0, 4, (5,))
    got = {}
    cb = ManifoldMixUp(modules=['s1'], seed=5)
    learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=cb)
    learn.training, learn.xb, learn.yb = True, (x,), (y,)
    learn('before_batch')
    h0 = model.s1.register_forward_hook(lambda m, a, o: got.__setitem__('c', o.detach().clone()), prepend=True)
    h1 = model.s2.register_forward_pre_hook(lambda m, a: got.__setitem__('m', a[0].detach().clone()))
    learn.pred = model(x); learn('after_pred'); h0.remove(); h1.remove()
    eq(got['m'].dtype, torch.bfloat16)
    lam = cb._prm.lam.to(torch.bfloat16).view(-1, 1, 1, 1)
    close(got['m'].float(), torch.lerp(got['c'][cb._prm.perm], got['c'], lam).float(), eps=1e-2)


def test_a_site_that_never_runs_is_an_error_before_any_weight_changes():
    model = Net()
    model.unused = nn.Linear(3, 3)
    learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=ManifoldMixUp(modules=['unused']))
    w = [p.detach().clone() for p in model.parameters()]
    before = hooks(model)
    with pytest.raises(ValueError, match="'unused' did not run in the forward pass"):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters()))
    eq(hooks(model), before)


class Flat(nn.Module):
    def forward(self, x): return x.reshape(-1)                                # no batch dim

class FlatNet(Net):
    "A model with a module whose output has no batch dim"
    def __init__(self): super().__init__(); self.flat = Flat()
    def forward(self, x):
        h = self.s1(self.stem(x))
        return self.head(self.s2(self.flat(h).view(h.shape)))


def test_a_site_without_batch_dim_is_an_error_naming_it():
    model = FlatNet()
    learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=ManifoldMixUp(modules=['s1', 'flat'], seed=0))
    w = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="module 'flat' cannot be mixed: it needs the batch"):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters()))
    eq(hooks(model), hooks(FlatNet()))


# ------------------------------------------------------------------------------------------------ hooks never left behind
def raising(event, exc=RuntimeError):
    "A callback that raises at `event` of the first training batch, after ours (order 5 > 1)"
    def f(self):
        if self.training: raise exc('injected')
    return type('Raise', (Callback,), {'order': 5, event: f})()


@pytest.mark.parametrize('where', ['before_batch', 'forward', 'after_pred', 'after_loss', 'loss', 'kbd'])
def test_hooks_removed_after_any_exception(where):
    model = Net(boom={'forward': 's2', 'kbd': 'kbd'}.get(where))
    lf = nn.CrossEntropyLoss()
    if where == 'loss':
        def lf(p, y, reduction='mean'): raise RuntimeError('injected in the loss')
    before = hooks(model)
    cbs = [ManifoldMixUp(modules=['s1', 's2'], seed=0)]
    if where in ('before_batch', 'after_pred', 'after_loss'): cbs.append(raising(where))
    learn = Learner(dls(), model, loss_func=lf, cbs=cbs)
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    eq(hooks(model), before)
    assert learn.loss_func is lf


def test_hooks_exist_only_while_a_training_batch_runs():
    model = Net()
    before = hooks(model)
    seen = []
    class Spy(Callback):
        order = 50
        def before_batch(self): seen.append(('train' if self.training else 'valid', sum(len(m._forward_hooks) for m in model.modules())))
        def after_batch(self): seen.append(('after', sum(len(m._forward_hooks) for m in model.modules())))
    learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=[ManifoldMixUp(modules=['s1', 's2']), Spy()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    train = [n for k, n in seen if k == 'train']
    eq(train[0], 2); assert set(train[1:]) == {1}                              # the mixing hook (+ the first batch's probe)...
    assert all(n == 0 for k, n in seen if k in ('valid', 'after'))              # ...and none otherwise
    eq(hooks(model), before)


def test_validation_get_preds_and_export_identical_to_no_augmentation(tmp_path):
    d = dls()
    set_seed(0); learn = Learner(d, Net(), loss_func=nn.CrossEntropyLoss()).manifold_mixup(modules=['s1', 's2'], seed=0).cutout(length=3)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    plain = Learner(d, Net(), loss_func=nn.CrossEntropyLoss())
    plain.model.load_state_dict(learn.model.state_dict())
    with learn.no_bar(): a = learn.get_preds(with_loss=True)
    with plain.no_bar(): b = plain.get_preds(with_loss=True)
    for u, v in zip(a, b): assert torch.equal(u, v)
    with learn.no_bar(): va = learn.validate()
    with plain.no_bar(): vb = plain.validate()
    eq(va, vb)
    learn.export(tmp_path/'m.pkl')
    from fastai.learner import load_learner
    back = load_learner(tmp_path/'m.pkl')
    assert not any(type(c).__name__ in ('ManifoldMixUp', 'Cutout') for c in back.cbs)


def test_refused_with_another_mixing_callback_combines_with_cutout():
    learn = Learner(dls(), Net(), loss_func=nn.CrossEntropyLoss(), cbs=[ManifoldMixUp(modules=['s1']), MixUp()])
    with pytest.raises(ValueError, match='cannot run with'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    eq(hooks(learn.model), hooks(Net()))
    learn = Learner(dls(), Net(), loss_func=nn.CrossEntropyLoss()).manifold_mixup(modules=['s1']).cutout(length=2)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)


def test_seeded_draws_repeat_and_p0_off_last_mix_nothing():
    def draws(**kw):
        model = Net(); picked = []
        cb = ManifoldMixUp(modules=['s1', 's2'], **kw)
        class Spy(Callback):
            order = 50
            def before_batch(self):
                if self.training: picked.append((None if cb._prm is None else (cb._site.name, cb._prm.lam.clone())))
        set_seed(0)
        learn = Learner(dls(), model, loss_func=nn.CrossEntropyLoss(), cbs=[cb, Spy()])
        with learn.no_bar(), learn.no_logging(): learn.fit(2)
        return picked
    a, b = draws(seed=7), draws(seed=7)
    eq([s for s, _ in a], [s for s, _ in b]); assert all(torch.equal(u, v) for (_, u), (_, v) in zip(a, b))
    assert len({s for s, _ in a}) == 2                                          # both sites drawn
    assert all(o is None for o in draws(p=0.))
    off = draws(seed=7, off_last=1)
    assert all(o is not None for o in off[:len(off) // 2]) and all(o is None for o in off[len(off) // 2:])


def test_unet_skip_connections_see_the_mixed_state():
    from torchvision.models import resnet18
    from fastai.vision.learner import create_unet_model
    torch.manual_seed(0)
    unet = create_unet_model(resnet18, 3, (32, 32), pretrained=False)
    x, m = torch.randn(3, 3, 32, 32), torch.randint(0, 3, (3, 32, 32))
    cb = ManifoldMixUp(modules=['layers.0.4'], seed=0)                           # encoder stage 1, whose output a skip stores
    got = {}
    learn = Learner(dls(), unet, loss_func=CrossEntropyLossFlat(axis=1), cbs=cb)
    learn.training, learn.xb, learn.yb = True, (x,), (m,)
    learn('before_batch')
    h = unet.layers[0][4].register_forward_hook(lambda mod, a, o: got.__setitem__('out', o.detach().clone()))
    learn.pred = unet(x); learn('after_pred'); h.remove()
    stored = [hk.stored for hk in unet.sfs]
    assert any(s.shape == got['out'].shape and torch.equal(s.detach(), got['out']) for s in stored)   # the skip holds the mixed state
    eq(learn.yb[0], m)                                                          # masks: the per-pixel losses are mixed
    learn.loss_grad = learn.loss_func(learn.pred, m); learn('after_loss')
    ce = lambda t: F.cross_entropy(learn.pred, t, reduction='none')
    lam = cb._prm.lam.view(-1, 1, 1)
    close(learn.loss_grad, (lam * ce(m) + (1 - lam) * ce(m[cb._prm.perm])).mean(), eps=1e-5)
