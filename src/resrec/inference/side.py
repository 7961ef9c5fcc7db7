"""The side branch rearranged for fast scoring of one user against many movies."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from resrec.errors import ModelFileError

_CHUNK_FLOATS = 512 * 400  # hidden activations per block of the all-movies pass (fit in L2)


# --------------------------------------------------------------------------- side branch


class _SideBranch:
    """The side branch rearranged for fast scoring; float32, read-only.

    The first Linear (with a following eval-mode BatchNorm folded in) splits as
    ``W1 . [p; q] + c1 = W1u . p + W1m . q + c1``. For one user and every movie
    the pre-activations ``x = Q . W1m^T + (c1 + W1u . p)`` are made block by
    block (512 movies at a time for 400 hidden units, more for fewer, so a block
    stays in the L2 cache) by one small matrix product from the K-wide movie
    table. Streaming a precomputed
    (n_movies, H) table ``W1m . q + c1`` instead was measured slower: at ML-20M
    scale it is 43 MB read per user, against 1 MB for the movie table.

    When one activation and one Linear to a single output follow (the
    reference network), the dot with ``w2`` needs no pass over the block for
    its linear part, with ``z = min(x, 0)``::

        w2 . elu(x) = w2 . x - w2 . z + alpha * (w2 . exp(z) - sum(w2))
        w2 . x      = Q . (W1m^T w2) + w2 . (c1 + W1u . p)     (precomputed per movie)

    so a block costs one product, one clamp, one exponential and two
    matrix-vector products, all in cache.
    """

    def __init__(self, side: nn.Module, movie_factors: Tensor) -> None:
        layers = [m for m in side.layers if not isinstance(m, nn.Dropout)]  # type: ignore[union-attr]
        first = layers.pop(0)
        if not isinstance(first, nn.Linear):
            raise ModelFileError(f"side branch starts with {type(first).__name__}, not Linear")
        weight = first.weight.detach().clone()
        bias = first.bias.detach().clone()
        if layers and isinstance(layers[0], nn.BatchNorm1d):
            scale, shift = _batch_norm_affine(layers.pop(0))
            weight = weight * scale[:, None]
            bias = bias * scale + shift
        # Private copies without gradients: fold-in differentiates through them, and
        # must neither touch the model's parameters nor race with other threads.
        self.activation = copy.deepcopy(layers.pop(0)) if layers else nn.Identity()
        self.rest = copy.deepcopy(nn.Sequential(*layers)).eval().requires_grad_(False)
        self.activation.eval().requires_grad_(False)

        k = movie_factors.shape[1]
        self.hidden = weight.shape[0]
        self.chunk = max(512, _CHUNK_FLOATS // max(1, self.hidden))  # movies per block
        self.movie_factors = movie_factors
        self.w1 = weight.contiguous()  # (H, 2K)
        self.c1 = bias.contiguous()  # (H,)
        self.w1u_t = weight[:, :k].t().contiguous()  # (K, H)
        self.w1m_t = weight[:, k:].t().contiguous()  # (K, H)

        # The output layer, for the closed forms (zeros when they do not apply).
        self.kind, self.alpha = _fast_kind(self.activation, layers)
        self.w2 = torch.zeros(self.hidden)
        self.c2 = 0.0
        out = layers[0] if self.kind is not None else None
        if isinstance(out, nn.Linear):
            self.w2 = out.weight.detach()[0].clone()
            self.c2 = float(out.bias.detach()[0])
        self.alpha_w2 = self.alpha * self.w2
        self.sum_w2 = float(self.w2.sum())
        with torch.no_grad():
            self.movie_linear = movie_factors @ (self.w1m_t @ self.w2)  # (n_movies,)

    def lipschitz(self) -> float | None:
        """A Lipschitz constant of the activation, where one is known and worth using.

        None for the identity (the branch is then linear and already cheap)
        and for layers other than one activation and one output Linear.
        """
        if self.kind == "elu":
            return max(1.0, abs(self.alpha))
        if self.kind == "relu":
            return 1.0
        return None

    # -- all movies for one user -------------------------------------------

    def all_movies(
        self, p: Tensor, pool: ThreadPoolExecutor | None = None, parts: int = 1
    ) -> Tensor:
        """Side-branch output for one user embedding ``p`` (K,) and every movie.

        With a ``pool``, the movies are split in up to ``parts`` ranges scored by
        its threads (torch releases the GIL in each operation).
        """
        b = p @ self.w1u_t + self.c1  # (H,): the user's share of every pre-activation
        if self.kind is None:
            return self._general_blocks(b)
        linear = self.movie_linear + float(self.w2 @ b)  # w2 . x for every movie
        if self.kind == "identity":
            return linear + self.c2

        n = self.movie_factors.shape[0]
        negative = torch.empty(n)  # w2 . min(x, 0)
        expo = torch.empty(n)  # alpha w2 . exp(min(x, 0))
        parts = 1 if pool is None else min(parts, n // (4 * self.chunk))
        if parts <= 1:
            self._elu_blocks(b, 0, n, negative, expo)
        else:
            step = -(-n // parts // self.chunk) * self.chunk
            assert pool is not None
            jobs = [
                pool.submit(self._elu_blocks, b, lo, min(n, lo + step), negative, expo)
                for lo in range(0, n, step)
            ]
            for job in jobs:
                job.result()
        out = linear - negative
        if self.kind == "elu":
            out += expo
            out -= self.alpha * self.sum_w2
        return out + self.c2

    def _elu_blocks(self, b: Tensor, lo: int, hi: int, negative: Tensor, expo: Tensor) -> None:
        """Fill ``negative`` and ``expo`` for movies ``lo:hi``, a block at a time."""
        q = self.movie_factors
        with torch.inference_mode():  # per thread: a pool's threads start outside it
            block = torch.empty(min(self.chunk, hi - lo), self.hidden)
            for start in range(lo, hi, self.chunk):
                stop = min(hi, start + self.chunk)
                z = torch.addmm(b, q[start:stop], self.w1m_t, out=block[: stop - start])
                z.clamp_(max=0)
                torch.mv(z, self.w2, out=negative[start:stop])
                if self.kind == "elu":
                    torch.mv(z.exp_(), self.alpha_w2, out=expo[start:stop])

    def _general_blocks(self, b: Tensor) -> Tensor:
        q = self.movie_factors
        n = q.shape[0]
        out = torch.empty(n)
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            x = torch.addmm(b, q[lo:hi], self.w1m_t)
            out[lo:hi] = self.rest(self.activation(x)).reshape(-1)
        return out

    # -- pairs --------------------------------------------------------------

    def pairs(self, p: Tensor, q: Tensor, block: Tensor | None = None) -> Tensor:
        """Side-branch output for rows of user embeddings ``p`` and movie embeddings ``q``.

        ``block`` is optional scratch space of at least ``(len(p), H)``.
        """
        x = torch.cat([p, q], 1)
        if self.kind is None or torch.is_grad_enabled():
            h = torch.addmm(self.c1, x, self.w1.t())
            return self.rest(self.activation(h)).reshape(-1)
        if block is None:
            block = torch.empty(x.shape[0], self.hidden)
        h = torch.addmm(self.c1, x, self.w1.t(), out=block[: x.shape[0]])  # (n, H)
        out = h @ self.w2
        if self.kind == "identity":
            return out + self.c2
        out -= h.clamp_(max=0) @ self.w2
        if self.kind == "elu":
            out += h.exp_() @ self.alpha_w2 - self.alpha * self.sum_w2
        return out + self.c2


def _batch_norm_affine(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``scale * x + shift``."""
    assert norm.running_var is not None and norm.running_mean is not None
    scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean.detach() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    return scale, shift


def _fast_kind(activation: nn.Module, rest: list[nn.Module]) -> tuple[str | None, float]:
    """Which closed form the all-movies pass can use, and ELU's alpha."""
    single_out = len(rest) == 1 and isinstance(rest[0], nn.Linear) and rest[0].out_features == 1
    if not single_out:
        return None, 0.0
    if isinstance(activation, nn.ELU):
        return "elu", float(activation.alpha)
    if isinstance(activation, nn.ReLU):
        return "relu", 0.0
    if isinstance(activation, nn.Identity):
        return "identity", 0.0
    return None, 0.0


# --------------------------------------------------------------------------- bounds for top-N


class SideBounds:
    """Side-branch values of every movie at a few anchor users, and how far a user may be off.

    For a user embedding ``p`` and an anchor ``a``, the pre-activations differ
    by ``W1u . (p - a)`` for every movie alike. The activation is
    ``L``-Lipschitz (ELU with ``alpha``: ``max(1, alpha)``; ReLU: 1), so for
    every movie ``m``::

        |side(p, m) - side(a, m)| <= L * sum_j |w2_j| |(W1u . (p - a))_j| = delta(p, a)

    Top-N uses ``side(a, m)`` of the nearest anchor plus the exact main branch
    as a rough score known to within ``delta``; only movies whose rough score
    is within ``2 delta`` of the n-th best can be in the top N, and only those
    are scored exactly. The result is the same as scoring every movie; the
    saving depends on how close users sit to an anchor, so it is measured in
    ``benchmarks/bench_inference.py`` rather than promised.

    Anchors are the centres of a seeded k-means of the users' embeddings in
    the bound's own coordinates ``|w2| * (W1u . p)``, run on at most
    ``sample`` users. Building costs one all-movies pass per anchor.
    """

    def __init__(
        self, side: _SideBranch, users: Tensor, count: int = 64, sample: int = 20_000
    ) -> None:
        lipschitz = side.lipschitz()
        if lipschitz is None:
            raise ValueError("side branch has no Lipschitz bound")
        with torch.inference_mode():
            # (K, H): maps an embedding difference to the weighted pre-activation change
            self.metric = side.w1u_t * side.w2.abs() * lipschitz
            generator = torch.Generator().manual_seed(0)
            if users.shape[0] > sample:
                users = users[torch.randperm(users.shape[0], generator=generator)[:sample]]
            self.anchors = _kmeans(users, users @ self.metric, min(count, users.shape[0]))
            self.mapped = self.anchors @ self.metric  # (A, H)
            self.table = torch.stack([side.all_movies(a) for a in self.anchors])  # (A, movies)

    def nearest(self, p: Tensor) -> tuple[int, float]:
        """The anchor closest to ``p`` in the bound's metric, and the bound ``delta``."""
        with torch.inference_mode():
            distance = (self.mapped - p @ self.metric).abs().sum(1)
            best = int(distance.argmin())
            return best, float(distance[best])


def _kmeans(points: Tensor, mapped: Tensor, count: int, rounds: int = 15) -> Tensor:
    """Centres (in ``points``' space) of a seeded Lloyd k-means run on ``mapped``."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randperm(points.shape[0], generator=generator)[:count]
    centres, centres_mapped = points[start].clone(), mapped[start].clone()
    for _ in range(rounds):
        label = torch.cdist(mapped, centres_mapped).argmin(1)
        sizes = torch.bincount(label, minlength=count).clamp_min(1).unsqueeze(1)
        used = torch.bincount(label, minlength=count) > 0
        sums = torch.zeros_like(centres).index_add_(0, label, points)
        sums_mapped = torch.zeros_like(centres_mapped).index_add_(0, label, mapped)
        centres[used] = (sums / sizes)[used]
        centres_mapped[used] = (sums_mapped / sizes)[used]
    return centres
