"""Row optimisers match their dense counterparts."""

from __future__ import annotations

import torch

from resrec.train.optim import LazyAdagrad, LazyMomentumSGD, PlainSGD


def _batches(
    n_rows: int, steps: int, batch: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        index = torch.randint(0, n_rows, (batch,), generator=g)  # duplicates on purpose
        grad = torch.randn(batch, 3, generator=g, dtype=torch.float32)
        out.append((index, grad))
    return out


def test_lazy_momentum_equals_keras_dense_momentum() -> None:
    n_rows, lr, m = 50, 0.08, 0.9
    start = torch.randn(n_rows, 3)
    lazy_w = start.clone()
    lazy = LazyMomentumSGD({"t": lazy_w}, lr=lr, momentum=m)

    dense_w = start.clone().double()
    velocity = torch.zeros_like(dense_w)
    for step, (index, grad) in enumerate(_batches(n_rows, 40, 8), start=1):
        lazy.update("t", index, grad, step)
        # Keras: every row's velocity decays and moves the row, gradient or not.
        dense_grad = torch.zeros_like(dense_w).index_add_(0, index, grad.double())
        velocity = m * velocity - lr * dense_grad
        dense_w += velocity
    lazy.flush(40)

    torch.testing.assert_close(lazy_w.double(), dense_w, rtol=0, atol=1e-5)


def test_lazy_momentum_untouched_rows_keep_moving_after_flush() -> None:
    w = torch.zeros(2, 1)
    opt = LazyMomentumSGD({"t": w}, lr=1.0, momentum=0.5)
    opt.update("t", torch.tensor([0]), torch.tensor([[1.0]]), step=1)  # v = -1, w = -1
    opt.flush(3)  # two idle steps: v -> -0.5 -> -0.25, w -> -1.5 -> -1.75
    assert w[0, 0].item() == -1.75
    assert opt.velocity["t"][0, 0].item() == -0.25
    assert w[1, 0].item() == 0.0


def test_plain_sgd_sums_duplicate_rows() -> None:
    w = torch.zeros(3, 2)
    PlainSGD({"t": w}, lr=0.5).update(
        "t", torch.tensor([1, 1]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), step=1
    )
    assert w.tolist() == [[0.0, 0.0], [-2.0, -3.0], [0.0, 0.0]]


def test_lazy_adagrad_equals_dense_adagrad() -> None:
    start = torch.randn(20, 3)
    lazy_w = start.clone()
    lazy = LazyAdagrad({"t": lazy_w}, lr=0.1, eps=1e-7)
    dense_w = start.clone()
    acc = torch.zeros_like(dense_w)
    for step, (index, grad) in enumerate(_batches(20, 30, 6, seed=1), start=1):
        lazy.update("t", index, grad, step)
        g = torch.zeros_like(dense_w).index_add_(0, index, grad)
        touched = torch.zeros(20, dtype=torch.bool)
        touched[index] = True
        acc = acc + g * g
        dense_w = torch.where(
            touched.unsqueeze(1), dense_w - 0.1 * g / (acc.sqrt() + 1e-7), dense_w
        )
    torch.testing.assert_close(lazy_w, dense_w, rtol=1e-5, atol=1e-6)


def test_optimizer_state_round_trip() -> None:
    w = torch.randn(10, 3)
    opt = LazyMomentumSGD({"t": w}, lr=0.1, momentum=0.9)
    for step, (index, grad) in enumerate(_batches(10, 5, 4), start=1):
        opt.update("t", index, grad, step)
    state = opt.state_dict()
    w2 = w.clone()
    other = LazyMomentumSGD({"t": w2}, lr=0.5, momentum=0.9)
    other.load_state_dict(state)
    assert other.lr == 0.1
    torch.testing.assert_close(other.velocity["t"], opt.velocity["t"])
    torch.testing.assert_close(other.last_step["t"], opt.last_step["t"])
