"""Matrix factorisation by SGD with L2 (Gaia's MF app): rating ~ mu + U[user] . V[item]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import DTYPE, Params, Partition, Schedule, Workload
from .datasets import Ratings


class MatrixFactorization(Workload):
    """MF with tables U (users x rank) and V (items x rank); objective: test RMSE.

    Users are assigned to regions (a seeded split of the users), so each region's ratings
    are those of its own users, and within a region to workers. Updates are sparse: a
    worker reads and pushes only the U rows of its users and the V rows of the items its
    ratings mention.
    """

    objective_name = "rmse"

    def __init__(self, ratings: Ratings, *, rank: int = 20, lr: float = 0.02,
                 l2: float = 0.05, batch: int = 256, test_fraction: float = 0.1,
                 seed: int = 0, clock_fraction: float = 1.0, lr_decay: float = 0.0,
                 name: str = "mf") -> None:
        if rank < 1 or lr <= 0 or l2 < 0 or batch < 1 or not 0 < test_fraction < 1:
            raise ValueError("mf: need rank >= 1, lr > 0, l2 >= 0, batch >= 1, "
                             "0 < test_fraction < 1")
        self.name = name
        self.schedule = Schedule(clock_fraction, lr_decay)
        self.ratings = ratings
        self.rank, self.lr, self.l2, self.batch, self.seed = rank, lr, l2, batch, seed
        rng = np.random.default_rng(seed)
        n = len(ratings.rating)
        test = rng.random(n) < test_fraction
        self.train = np.flatnonzero(~test)
        self.test = np.flatnonzero(test)
        self.mu = float(ratings.rating[self.train].mean())

    def table_shapes(self) -> dict[str, tuple[int, int]]:
        return {"U": (self.ratings.n_users, self.rank), "V": (self.ratings.n_items, self.rank)}

    def init_params(self) -> Params:
        rng = np.random.default_rng(self.seed + 1)
        scale = 0.1
        return {name: rng.normal(0, scale, shape).astype(DTYPE)
                for name, shape in self.table_shapes().items()}

    def _user_regions(self, n_regions: int, rng: np.random.Generator) -> np.ndarray:
        """Region index of every user (the first draw of the partition's generator)."""
        return rng.permutation(self.ratings.n_users) % n_regions

    def partition(self, workers: Mapping[str, int]) -> dict[tuple[str, int], Partition]:
        """Users go to regions (seeded), then each region's users to its workers, so a
        user's row is updated by one worker only; item rows are shared."""
        regions = list(workers)
        rng = np.random.default_rng(self.seed + 2)
        r = self.ratings
        user_region = self._user_regions(len(regions), rng)
        user_worker = np.zeros(r.n_users, np.int64)
        for k, region in enumerate(regions):
            users = np.flatnonzero(user_region == k)
            user_worker[users[rng.permutation(len(users))]] = \
                np.arange(len(users)) % workers[region]
        train_users = r.user[self.train]
        parts = {}
        for k, region in enumerate(regions):
            for w in range(workers[region]):
                ex = self.train[(user_region[train_users] == k)
                                & (user_worker[train_users] == w)]
                parts[(region, w)] = _partition(region, w, r.user[ex], r.item[ex],
                                                r.rating[ex])
        return parts

    def test_regions(self, regions: Sequence[str]) -> dict[str, np.ndarray]:
        user_region = self._user_regions(len(regions), np.random.default_rng(self.seed + 2))
        test_region = user_region[self.ratings.user[self.test]]
        return {r: np.flatnonzero(test_region == k) for k, r in enumerate(regions)}

    def raw_records(self, part: Partition) -> dict[str, np.ndarray]:
        return {"user": part.rows["U"][part.data["u"]].astype(np.int32),
                "item": part.rows["V"][part.data["i"]].astype(np.int32),
                "rating": part.data["r"]}

    def partition_records(self, records: Sequence[Mapping[str, np.ndarray]], region: str,
                          workers: int) -> dict[tuple[str, int], Partition]:
        if workers < 1:
            raise ValueError("partition_records needs at least one worker")
        user = np.concatenate([r["user"] for r in records])
        item = np.concatenate([r["item"] for r in records])
        rating = np.concatenate([r["rating"] for r in records])
        if len(user) and (user.min() < 0 or user.max() >= self.ratings.n_users
                          or item.min() < 0 or item.max() >= self.ratings.n_items):
            raise ValueError("rating records name users or items outside the model")
        rng = np.random.default_rng(self.seed + 4)
        user_worker = rng.permutation(self.ratings.n_users) % workers
        return {(region, w): _partition(region, w, user[mine], item[mine], rating[mine])
                for w in range(workers)
                for mine in [user_worker[user] == w]}

    def local_pass(self, params: Params, part: Partition, clock: int) -> Params:
        U, V = params["U"].copy(), params["V"].copy()
        u, i, r = part.data["u"], part.data["i"], part.data["r"]
        order = self.schedule.examples(len(r), clock, part, self.seed)
        lr = DTYPE(self.schedule.lr(self.lr, clock))
        l2, mu = DTYPE(self.l2), DTYPE(self.mu)
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            uu, ii = u[idx], i[idx]
            Uu, Vi = U[uu], V[ii]
            err = r[idx] - mu - np.einsum("ij,ij->i", Uu, Vi)
            np.add.at(U, uu, lr * (err[:, None] * Vi - l2 * Uu))
            np.add.at(V, ii, lr * (err[:, None] * Uu - l2 * Vi))
        return {"U": U, "V": V}

    def evaluate(self, params: Params, subset: np.ndarray | None = None) -> dict[str, float]:
        r = self.ratings
        t = self.test if subset is None else self.test[subset]
        pred = self.mu + np.einsum("ij,ij->i", params["U"][r.user[t]], params["V"][r.item[t]])
        rmse = float(np.sqrt(np.mean((r.rating[t] - pred) ** 2)))
        return {"objective": rmse, "rmse": rmse}


def _partition(region: str, worker: int, user: np.ndarray, item: np.ndarray,
               rating: np.ndarray) -> Partition:
    """A worker's ratings with the U and V rows they touch (local indices into those)."""
    users, u_local = np.unique(user, return_inverse=True)
    items, i_local = np.unique(item, return_inverse=True)
    return Partition(region, worker, {"U": users.astype(np.int64), "V": items.astype(np.int64)},
                     {"u": u_local.astype(np.int32), "i": i_local.astype(np.int32),
                      "r": rating})
