"""Scores of many (user, movie) index pairs, block by block, for batch scoring."""

from __future__ import annotations

import torch
from torch import Tensor

from resrec.inference.side import _SideBranch

_BLOCK = 512  # pairs per block: the (512, H) hidden layer stays in the L2 cache


class PairScorer:
    """Unclipped scores minus ``mu`` for arrays of user and movie indices.

    Both tables are widened so that one gather per side brings all a pair
    needs: user rows ``[p, b_u, 1]`` and movie rows ``[q, 1, b_m]``, whose dot
    product is the main branch ``p . q + b_u + b_m``. When the side branch has
    a closed form (:class:`_SideBranch`), its first layer reads the same rows,
    ``[p, b_u, 1] . [W1u^T; 0; c1] + [q, 1, b_m] . [W1m^T; 0; 0]``, so a block
    costs two gathers, two small matrix products and the side branch's passes
    over its hidden layer, and nothing else.
    """

    def __init__(
        self,
        users: Tensor,
        user_bias: Tensor,
        movies: Tensor,
        movie_bias: Tensor,
        side: _SideBranch | None,
        main: bool,
    ) -> None:
        k = users.shape[1]
        self.k = k
        self.main = main
        self.side = side
        self.users = torch.cat([users, user_bias[:, None], torch.ones(users.shape[0], 1)], 1)
        self.movies = torch.cat([movies, torch.ones(movies.shape[0], 1), movie_bias[:, None]], 1)
        if side is not None and side.kind is not None:
            hidden = side.hidden
            self.w_user = torch.cat([side.w1u_t, torch.zeros(1, hidden), side.c1[None]], 0)
            self.w_movie = torch.cat([side.w1m_t, torch.zeros(2, hidden)], 0)
            self.constant = side.c2 - (side.alpha * side.sum_w2 if side.kind == "elu" else 0.0)

    def __call__(self, users: Tensor, movies: Tensor, out: Tensor) -> None:
        """Write the scores of pairs ``(users[i], movies[i])`` into ``out`` (all 1-D)."""
        width = self.users.shape[1]
        pu_buf, qm_buf = torch.empty(_BLOCK, width), torch.empty(_BLOCK, width)
        side = self.side
        fast = side is not None and side.kind is not None
        hidden = torch.empty(_BLOCK, side.hidden) if side is not None and fast else None
        with torch.inference_mode():
            for lo in range(0, users.shape[0], _BLOCK):
                u, m = users[lo : lo + _BLOCK], movies[lo : lo + _BLOCK]
                n = u.shape[0]
                pu = torch.index_select(self.users, 0, u, out=pu_buf[:n])
                qm = torch.index_select(self.movies, 0, m, out=qm_buf[:n])
                target = out[lo : lo + n]
                if self.main:
                    torch.sum(pu.mul(qm), 1, out=target)
                else:
                    target.zero_()
                if fast:
                    assert hidden is not None
                    self._side_closed_form(pu, qm, hidden[:n], target)
                elif side is not None:
                    target += side.pairs(pu[:, : self.k], qm[:, : self.k])

    def _side_closed_form(self, pu: Tensor, qm: Tensor, h: Tensor, target: Tensor) -> None:
        side = self.side
        assert side is not None
        torch.mm(pu, self.w_user, out=h)
        h.addmm_(qm, self.w_movie)
        target += h @ side.w2
        if side.kind == "identity":
            target += self.constant
            return
        h.clamp_(max=0)
        target -= h @ side.w2
        if side.kind == "elu":
            h.exp_()
            target += h @ side.alpha_w2
        target += self.constant
