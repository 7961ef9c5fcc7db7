"""The side branch rearranged for fast scoring of one user against many movies."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from resrec.errors import ModelFileError

_CHUNK_FLOATS = 512 * 400  # hidden activations per block of the all-movies pass (fit in L2)
_TABLE_BYTES = 16 << 20  # the largest precomputed (n_movies, H) table of the all-movies pass
_TABLE_CHUNK_FLOATS = 1 << 18  # hidden activations per block of the table pass
_TABLE_RANGE = 100.0  # largest |exponent| (base 2) the table pass lets exp2 see
LOG2E = math.log2(math.e)


# --------------------------------------------------------------------------- side branch


class _SideBranch:
    """The side branch rearranged for fast scoring; float32, read-only.

    The first Linear (with a following eval-mode BatchNorm folded in) splits as
    ``W1 . [p; q] + c1 = W1u . p + W1m . q + c1``. For one user and every movie
    the pre-activations ``x = Q . W1m^T + (c1 + W1u . p)`` are made block by
    block (512 movies at a time for 400 hidden units, more for fewer, so a block
    stays in the L2 cache) by one small matrix product from the K-wide movie
    table. For wide branches that beats streaming a precomputed (n_movies, H)
    table ``W1m . q + c1``, which at ML-20M scale is 43 MB for 400 units; narrow
    ones use such a table (below).

    When one activation and one Linear to a single output follow (the
    reference network), the dot with ``w2`` needs no pass over the block for
    its linear part, with ``z = min(x, 0)``::

        w2 . elu(x) = w2 . x - w2 . z + alpha * (w2 . exp(z) - sum(w2))
        w2 . x      = Q . (W1m^T w2) + w2 . (c1 + W1u . p)     (precomputed per movie)

    so a block costs one product, one clamp, one exponential and two
    matrix-vector products, all in cache. The exponential is taken base 2 on
    pre-activations scaled by ``log2(e)`` (folded into the weights):
    ``torch.exp2`` was measured 2-3 times as fast as ``torch.exp`` on float32.

    For a narrow branch (a table of at most :data:`_TABLE_BYTES`, such as the
    ``fast`` preset's 32 units: 3.4 MB at ML-20M scale) the movie half is
    precomputed as ``T = log2(e) (Q . W1m^T + c1)`` and the product is not
    needed at all. With ``s = log2(e) W1u . p``, ``log2(e) min(x, 0) =
    min(T, -s) + s``, so a block is one ``minimum`` against the row ``-s``,
    and the user's shift moves into the weights::

        w2 . min(x, 0)  = (w2 / log2(e)) . min(T, -s) + w2 . (W1u . p)
        w2 . exp(min(x, 0)) = (w2 * 2^s) . 2^min(T, -s)

    For the ``fast`` preset at ML-20M scale that pass was measured at 0.6 ms
    per user, against 1.1 ms for the product pass with ``exp2`` and 1.6 ms
    with ``exp`` (one thread). It is taken when every exponent stays within
    ``2^+-100`` (far from the ends of float32's range); otherwise the product
    pass is.
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
        self.w1u = weight[:, :k].contiguous()  # (H, K)
        self.w1u_t = weight[:, :k].t().contiguous()  # (K, H)
        self.w1m = weight[:, k:].contiguous()  # (H, K)
        self.w1m_t = weight[:, k:].t().contiguous()  # (K, H)
        self.w1m_t2 = self.w1m_t * LOG2E  # the same, for base-2 exponents
        self.c1_2 = self.c1 * LOG2E

        # The output layer, for the closed forms (zeros when they do not apply).
        self.kind, self.alpha = _fast_kind(self.activation, layers)
        self.w2 = torch.zeros(self.hidden)
        self.c2 = 0.0
        out = layers[0] if self.kind is not None else None
        if isinstance(out, nn.Linear):
            self.w2 = out.weight.detach()[0].clone()
            self.c2 = float(out.bias.detach()[0])
        self.alpha_w2 = self.alpha * self.w2
        self.w2_2 = self.w2 / LOG2E  # w2 . z = w2_2 . (log2(e) z)
        self.sum_w2 = float(self.w2.sum())
        self.table: Tensor | None = None  # log2(e) (Q . W1m^T + c1), for narrow branches
        self.table_range = 0.0
        n_movies = movie_factors.shape[0]
        with torch.no_grad():
            self.movie_linear = movie_factors @ (self.w1m_t @ self.w2)  # (n_movies,)
            if self.kind in ("elu", "relu") and 4 * n_movies * self.hidden <= _TABLE_BYTES:
                self.table = torch.addmm(self.c1_2, movie_factors, self.w1m_t2).contiguous()
                self.table_range = float(self.table.abs().max()) if n_movies else 0.0
        self.table_chunk = max(512, _TABLE_CHUNK_FLOATS // max(1, self.hidden))

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
        user = p @ self.w1u_t  # (H,): W1u . p
        b = user + self.c1  # the user's share of every pre-activation
        if self.kind is None:
            return self._general_blocks(b)
        if self.kind == "identity":  # w2 . x for every movie
            return self.movie_linear + (float(self.w2 @ b) + self.c2)

        n = self.movie_factors.shape[0]
        negative = torch.empty(n)  # w2 . min(x, 0)
        expo = torch.empty(n)  # alpha w2 . exp(min(x, 0))
        shift = user * LOG2E  # s = log2(e) W1u . p
        blocks: Callable[[Tensor, int, int, Tensor, Tensor], None]
        if self.table is not None and float(shift.abs().max()) + self.table_range < _TABLE_RANGE:
            blocks, chunk, user_part = self._table_blocks, self.table_chunk, shift
        else:
            blocks, chunk, user_part = self._elu_blocks, self.chunk, b * LOG2E
        parts = 1 if pool is None else min(parts, n // (4 * chunk))
        if parts <= 1:
            blocks(user_part, 0, n, negative, expo)
        else:
            step = -(-n // parts // chunk) * chunk
            assert pool is not None
            jobs = [
                pool.submit(blocks, user_part, lo, min(n, lo + step), negative, expo)
                for lo in range(0, n, step)
            ]
            for job in jobs:
                job.result()
        out = torch.sub(self.movie_linear, negative, out=negative)
        if self.kind == "elu":
            out += expo
        constant = float(self.w2 @ b) + self.c2  # the rest of w2 . x, and the output bias
        return out.add_(constant - self.alpha * self.sum_w2 if self.kind == "elu" else constant)

    def _elu_blocks(self, b2: Tensor, lo: int, hi: int, negative: Tensor, expo: Tensor) -> None:
        """Fill ``negative`` and ``expo`` for movies ``lo:hi``, a block at a time.

        ``b2`` is the user's share of the pre-activations times ``log2(e)``.
        """
        q = self.movie_factors
        with torch.inference_mode():  # per thread: a pool's threads start outside it
            block = torch.empty(min(self.chunk, hi - lo), self.hidden)
            for start in range(lo, hi, self.chunk):
                stop = min(hi, start + self.chunk)
                z = torch.addmm(b2, q[start:stop], self.w1m_t2, out=block[: stop - start])
                z.clamp_(max=0)  # log2(e) min(x, 0)
                torch.mv(z, self.w2_2, out=negative[start:stop])
                if self.kind == "elu":
                    torch.mv(z.exp2_(), self.alpha_w2, out=expo[start:stop])

    def _table_blocks(
        self, shift: Tensor, lo: int, hi: int, negative: Tensor, expo: Tensor
    ) -> None:
        """:meth:`_elu_blocks` from the precomputed table; ``shift`` is ``log2(e) W1u . p``."""
        assert self.table is not None
        with torch.inference_mode():
            below = -shift
            scaled_w2 = self.alpha_w2 * torch.exp2(shift)  # alpha w2 * 2^s
            chunk = self.table_chunk
            block = torch.empty(min(chunk, hi - lo), self.hidden)
            elu = self.kind == "elu"
            for rows, neg, exp in zip(
                self.table[lo:hi].split(chunk),
                negative[lo:hi].split(chunk),
                expo[lo:hi].split(chunk),
                strict=True,
            ):
                z = block if rows.shape[0] == block.shape[0] else block[: rows.shape[0]]
                torch.minimum(rows, below, out=z)
                torch.mv(z, self.w2_2, out=neg)  # less w2 . W1u p
                if elu:
                    torch.mv(z.exp2_(), scaled_w2, out=exp)
            negative[lo:hi] += float(self.w2 @ shift) / LOG2E

    def _general_blocks(self, b: Tensor) -> Tensor:
        q = self.movie_factors
        n = q.shape[0]
        out = torch.empty(n)
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            x = torch.addmm(b, q[lo:hi], self.w1m_t)
            out[lo:hi] = self.rest(self.activation(x)).reshape(-1)
        return out

    # -- one user, some movies ----------------------------------------------

    def one_user(self, p: Tensor, q: Tensor) -> Tensor:
        """Side-branch output for one user embedding ``p`` (K,) and movie embeddings ``q``.

        The network's own operations on ``W1u . p + W1m . q + c1``: the exact
        scores that explanations show and that settle a top-N.
        """
        h = torch.addmm(torch.addmv(self.c1, self.w1u, p), q, self.w1m_t)  # (n, H)
        if self.kind is None:
            return self.rest(self.activation(h)).reshape(-1)
        if self.kind == "elu":
            h = torch.nn.functional.elu(h, self.alpha)
        elif self.kind == "relu":
            h = torch.relu(h)
        return torch.mv(h, self.w2).add_(self.c2)

    # -- one user, one movie -------------------------------------------------

    def user_part(self, p: Tensor) -> Tensor:
        """``W1u . p + c1``: the user's share of every pre-activation, for :meth:`one_pair`."""
        return torch.addmv(self.c1, self.w1u, p)

    def one_pair(self, user_part: Tensor, q: Tensor) -> float:
        """Side-branch output for one movie embedding ``q`` (K,).

        ``user_part`` is :meth:`user_part` of the user. The network's own
        operations on one pair, in shapes that do not depend on how many
        movies are scored: every prediction shown comes from here.
        """
        h = torch.addmv(user_part, self.w1m, q)  # (H,)
        if self.kind is None:
            return float(self.rest(self.activation(h[None])).reshape(()))
        if self.kind == "elu":
            torch.nn.functional.elu_(h, self.alpha)
        elif self.kind == "relu":
            h.relu_()
        return float(torch.dot(h, self.w2)) + self.c2

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
    by ``d = W1u . (p - a)`` for every movie alike. The activation is
    ``L``-Lipschitz (ELU with ``alpha``: ``max(1, alpha)``; ReLU: 1), so for
    every movie ``m``::

        |side(p, m) - side(a, m)| <= L * sum_j |w2_j| |d_j| = delta(p, a)

    When the activation also never decreases (ReLU, ELU with ``alpha >= 0``:
    its slope lies in ``[0, L]``), unit ``j`` moves by between 0 and
    ``L d_j``, so ``w2_j`` times it lies in an interval of width
    ``L |w2_j d_j|`` that has 0 at one end. Summed over the units::

        |side(p, m) - side(a, m) - L (w2 . d) / 2| <= delta(p, a) / 2

    half the width of the first bound, for the cost of one dot product.

    Top-N uses ``side(a, m) + shift`` of the nearest anchor plus the exact main
    branch as a rough score known to within a ``radius`` (``delta / 2``, or
    ``delta`` with ``shift = 0`` for another activation); only movies whose
    rough score is within ``2 radius`` of the n-th best can be in the top N,
    and only those are scored exactly. The result is the same as scoring every
    movie; the saving depends on how close users sit to an anchor, so it is
    measured in ``benchmarks/bench_inference.py`` rather than promised.

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
            # Half the slope times w2 . W1u p, for the one-sided bound (None: not monotone)
            monotone = side.kind == "relu" or (side.kind == "elu" and side.alpha >= 0)
            self.user_w2 = (side.w1u_t @ side.w2) * (0.5 * lipschitz) if monotone else None
            self.anchor_w2 = self.anchors @ self.user_w2 if self.user_w2 is not None else None

    def nearest(self, p: Tensor) -> tuple[int, float, float]:
        """The anchor closest to ``p`` in the bound's metric, a shift and a radius.

        For every movie ``m``, ``side(p, m)`` lies within ``radius`` of
        ``table[anchor, m] + shift``.
        """
        with torch.inference_mode():
            distance = (self.mapped - p @ self.metric).abs().sum(1)
            best = int(distance.argmin())
            delta = float(distance[best])
            if self.user_w2 is None or self.anchor_w2 is None:
                return best, 0.0, delta
            return best, float(p @ self.user_w2 - self.anchor_w2[best]), 0.5 * delta


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
