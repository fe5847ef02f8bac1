"Shared helpers for the tests: drive a callback's batch events exactly as `Learner` does (one implementation: `helpers.step`)."
from helpers import step, constants


def drive(cb, xb, yb, loss_func=None, pred=None, c=None):
    "Run `cb`'s `before_batch` on (`xb`, `yb`) in a training learner; with `pred`, also the loss and `after_loss`"
    return step(cb, xb, yb, loss_func=loss_func, pred=pred, c=c)
