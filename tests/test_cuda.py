"""On a GPU (skipped without CUDA, `cuda` marker): no device->host synchronisation in the callbacks' batch hooks, and the
same augmented batch on CPU and CUDA for the same replayed parameters. (tests/test_loop.py is the CUDA run of fastai's
loop: its data and model go to fastai's default device.)"""
import pytest, torch, torch.nn as nn
from fastai.learner import Learner
from fastai.test_utils import synth_dbunch
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix, ManifoldMixUp, MixCallback, mix_batch, mix_loss, erase_batch
from helpers import ONE_LINERS

pytestmark = pytest.mark.cuda

CBS = {
    'mixup': lambda **kw: MixUp(**kw), 'cutmix': lambda **kw: CutMix(**kw),
    'cutmixup': lambda **kw: CutMixUp(**kw), 'cutout': lambda **kw: Cutout(length=5, **kw),
    'mixup_p_batch': lambda **kw: MixUp(p=0.5, mode='batch', **kw), 'cutmixup_p': lambda **kw: CutMixUp(p=0.7, **kw),
    'cutout_noise': lambda **kw: Cutout(n_holes=3, length=0.25, fill='normal', p=0.5, **kw),
    'fmix': lambda **kw: FMix(**kw), 'fmix_p_batch': lambda **kw: FMix(p=0.6, mode='batch', **kw),
    'resizemix': lambda **kw: ResizeMix(**kw), 'resizemix_p': lambda **kw: ResizeMix(p=0.7, **kw),
    'randommix': lambda **kw: RandomMix(**kw), 'randommix_p_batch': lambda **kw: RandomMix(p=0.6, mode='batch', **kw),
}
TARGETS = ['class', 'onehot', 'mask']


def batch(kind, dev, bs=16, seed=0):
    "An image batch (bs, 3, 20, 24) and its targets: class indices, one-hot floats or an integer mask"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bs, 3, 20, 24, generator=g)
    y = {'class': torch.randint(0, 5, (bs,), generator=g),
         'onehot': torch.eye(5)[torch.randint(0, 5, (bs,), generator=g)],
         'mask': torch.randint(0, 5, (bs, 20, 24), generator=g)}[kind]
    return x.to(dev), y.to(dev)


def learner(cb, kind, dev):
    "A learner on `dev`, set up as in a training batch"
    lf = {'class': nn.CrossEntropyLoss(), 'onehot': nn.BCEWithLogitsLoss(), 'mask': nn.CrossEntropyLoss()}[kind]
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=lf, cbs=cb)
    learn.dls.c, learn.training = 5, True
    return learn


def pred_for(kind, x):
    bs = x.shape[0]
    return torch.randn(bs, 5, 20, 24, device=x.device) if kind == 'mask' else torch.randn(bs, 5, device=x.device)


@pytest.mark.parametrize('seed', [None, 11], ids=['global_rng', 'own_rng'])
@pytest.mark.parametrize('kind', TARGETS)
@pytest.mark.parametrize('name', list(CBS))
def test_batch_hooks_never_sync_with_the_host(name, kind, seed):
    if kind == 'mask' and name.startswith('mixup'): pytest.skip('covered by cutmixup')
    torch.manual_seed(0)
    x, y = batch(kind, 'cuda')
    cb = CBS[name](seed=seed)
    learn = learner(cb, kind, 'cuda')
    pred = pred_for(kind, x).requires_grad_()
    changed = []
    for _ in range(3):                                                   # the generator is created on the first batch
        learn.xb, learn.yb = (x,), (y,)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')                          # any device->host sync raises
        try:
            cb('before_batch')                                           # the callback's own hooks, as the Learner calls them
            learn.pred = pred
            learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
            cb('after_loss')
            learn.loss_grad.backward()
            cb('after_batch')
        finally: torch.cuda.set_sync_debug_mode('default')
        assert learn.xb[0].is_cuda and learn.loss_func.reduction == 'mean'
        changed.append(not torch.equal(learn.xb[0], x))
    # every batch was augmented (with p < 1 per sample, some sample of 16 is; a whole batch at p < 1 may be left as is)
    if not (cb.mode == 'batch' and cb.p < 1): assert all(changed), changed


@pytest.mark.parametrize('kind', TARGETS)
@pytest.mark.parametrize('name', list(CBS))
def test_cpu_and_cuda_give_the_same_batch_for_the_same_parameters(name, kind):
    x, y = batch(kind, 'cpu')
    cb = CBS[name]()
    learn = learner(cb, kind, 'cpu')
    if not isinstance(cb, MixCallback):
        torch.manual_seed(0)
        lo, hi = cb.draw(x)                                              # drawn on CPU, replayed on both devices
        fill, mask_fill = (0. if isinstance(cb.fill, str) else cb.fill), (255 if kind == 'mask' else None)  # noise: RNG per device
        xc, yc = erase_batch((x,), (y,), lo, hi, fill, mask_fill)
        xg, yg = erase_batch((x.cuda(),), (y.cuda(),), lo.cuda(), hi.cuda(), fill, mask_fill)
        assert torch.equal(xc[0], xg[0].cpu()) and torch.equal(yc[0], yg[0].cpu()) and not torch.equal(xc[0], x)
        if kind == 'mask': assert (yc[0] == 255).any()
        return
    if kind == 'mask' and name.startswith('mixup'): pytest.skip('covered by cutmixup')
    torch.manual_seed(0)
    prm = cb.draw(x)                                                     # drawn on CPU, replayed on both devices
    c = mix_batch((x,), (y,), prm, cb.mix_target, 5)
    g = mix_batch((x.cuda(),), (y.cuda(),), prm.to('cuda'), cb.mix_target, 5)
    pasted = prm.cut if prm.cut is not None and not prm.resize else torch.zeros_like(prm.lam, dtype=torch.bool)
    exact = (prm.lam == 1) | pasted                                      # copies and pastes: bit for bit (ResizeMix interpolates)
    assert torch.equal(c[0][0][exact], g[0][0].cpu()[exact])
    torch.testing.assert_close(g[0][0].cpu(), c[0][0], rtol=0, atol=1e-6)  # blends: lerp, to rounding
    for a, b in zip(c[1] + (c[2] or ()), g[1] + (g[2] or ())): torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
    if c[3] is not None:
        assert torch.equal(c[3], g[3].cpu())
        p = pred_for(kind, x)
        lc, lg = mix_loss(learn.loss_func, p, c[1], c[2], c[3]), mix_loss(learn.loss_func, p.cuda(), g[1], g[2], g[3])
        torch.testing.assert_close(lg.cpu(), lc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ONE_LINERS)
def test_fp16_training_on_cuda(name):
    "fastai's to_fp16 (autocast + GradScaler) with each callback: fp32 mixing, finite loss, loss_func untouched"
    from fastai.vision.all import vision_learner, resnet18
    from fastai_mixaug.data import mnist_dls
    from fastai.callback.core import Callback, CancelTrainException
    dls = mnist_dls(bs=32, n_valid=64, device='cuda')
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1)
    lf, seen = learn.loss_func, []
    class Spy(Callback):
        order = 5
        def before_batch(self):
            if self.training: seen.append(self.xb[0].dtype)
        def after_batch(self):
            if self.training and self.iter >= 3: raise CancelTrainException()
    getattr(learn, name)().to_fp16()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=Spy())
    assert seen == [torch.float32] * 4 and learn.loss_func is lf
    assert torch.stack(list(learn.recorder.losses)).isfinite().all()


@pytest.mark.parametrize('seed', [None, 3], ids=['global_rng', 'own_rng'])
def test_manifold_mixup_never_syncs_and_mixes_on_cuda(seed):
    "The hidden-state hook, its site drawn on the CPU, mixes on the GPU with no device->host sync; no hook left after"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).cuda()
    cb = ManifoldMixUp(modules=['1', '3'], seed=seed)
    learn = Learner(synth_dbunch(), model, loss_func=nn.CrossEntropyLoss(), cbs=cb)
    learn.training = True
    x, y = batch('class', 'cuda')
    for _ in range(3):
        learn.xb, learn.yb = (x,), (y,)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            cb('before_batch'); learn.pred = model(x); cb('after_pred')
            learn.loss_grad = learn.loss_func(learn.pred, y); cb('after_loss'); learn.loss_grad.backward(); cb('after_batch')
        finally: torch.cuda.set_sync_debug_mode('default')
        assert torch.equal(learn.xb[0], x) and learn.loss_grad.isfinite()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
