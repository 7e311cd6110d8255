"""Multi-armed bandits that learn which strategy (arm) fills each slot of a list, and IPS.

:class:`SlotBandit` keeps Beta-Bernoulli statistics per (user segment, slot, arm):
Thompson sampling draws a success rate from each arm's posterior and serves the best draw;
UCB1 serves the best upper confidence bound. Arms are strategy names (strings). The
context is a user-activity segment ("new", "casual", "heavy" from the user's event
count), so the bandit can learn that new users are best served by popular items and
heavy users by co-occurrence, for instance.

Rewards lie in [0, 1] (1 a click, 0 an impression without one; fractions count as that
share of a success). Everything is deterministic given ``seed`` and the random generator
passed to :meth:`SlotBandit.choose`; the state is plain numpy arrays (picklable,
``state_dict`` / ``load_state_dict``).

:func:`ips_estimate` and :func:`ips_value` estimate a target policy's reward from a log
gathered by another policy with known propensities (inverse propensity scoring), the
off-policy way to judge a bandit before it serves.

>>> bandit = SlotBandit(["cooc", "trending"], n_slots=2, seed=0)
>>> for _ in range(200):
...     bandit.update({"n_events": 5}, "cooc", 1.0, slot=0)
...     bandit.update({"n_events": 5}, "trending", 0.0, slot=0)
>>> bandit.choose({"n_events": 5}, 1)
['cooc']
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_SEGMENTS: tuple[tuple[str, float], ...] = (("new", 1), ("casual", 20), ("heavy", math.inf))
"""Segment name and the exclusive upper bound of the user's prior event count."""

Context = Mapping[str, Any] | str | int | None


class SlotBandit:
    """Thompson sampling (Beta-Bernoulli) or UCB1 per user segment and list slot.

    Parameters
    ----------
    arms
        Arm names (strategies), in a fixed order.
    policy
        ``"thompson"`` or ``"ucb1"``.
    n_slots
        Slots with their own statistics; later slots share the last one's.
    segments
        ``(name, upper bound)`` pairs over the user's event count, ascending; a context
        ``{"n_events": n}`` falls in the first segment whose bound exceeds ``n``. ``None``
        means one segment for everyone (a plain, non-contextual bandit).
    prior
        Beta prior ``(alpha, beta)`` of every arm (Thompson); UCB1 ignores it.
    ucb_c
        Exploration constant of UCB1 (``mean + c * sqrt(2 ln N / n)``).
    discount
        Factor applied to a (segment, slot)'s statistics at each of its updates (``None``
        or 1: none); below 1 the bandit forgets old rewards and follows drift.
    seed
        Seeds the generator that :meth:`choose` uses when none is passed.
    """

    def __init__(
        self,
        arms: Sequence[str],
        policy: str = "thompson",
        n_slots: int = 10,
        segments: Sequence[tuple[str, float]] | None = DEFAULT_SEGMENTS,
        prior: tuple[float, float] = (1.0, 1.0),
        ucb_c: float = 1.0,
        discount: float | None = None,
        seed: int = 0,
    ):
        if policy not in ("thompson", "ucb1"):
            raise ValueError(f"policy must be 'thompson' or 'ucb1', got {policy!r}")
        if not arms or len(set(arms)) != len(arms):
            raise ValueError("arms must be distinct and at least one")
        if n_slots < 1:
            raise ValueError("n_slots must be at least 1")
        self.arms = list(arms)
        self.policy = policy
        self.n_slots = int(n_slots)
        self.segments = [tuple(s) for s in segments] if segments else None
        self.prior = (float(prior[0]), float(prior[1]))
        self.ucb_c = float(ucb_c)
        self.discount = discount
        self.seed = seed
        self._arm_index = {arm: i for i, arm in enumerate(self.arms)}
        shape = (len(self.segments or [None]), self.n_slots, len(self.arms))
        self._successes = np.zeros(shape, dtype=np.float64)
        self._trials = np.zeros(shape, dtype=np.float64)
        self._rewards_total = np.zeros(len(self.arms), dtype=np.float64)  # undiscounted, all time
        self._pulls_total = np.zeros(len(self.arms), dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        # the four statistics as last reported by ``delta``, plus what peers added since: the
        # difference is this bandit's own learning. None until sharing starts
        self._reported: tuple[np.ndarray, ...] | None = None

    # -- context -------------------------------------------------------------------------
    @property
    def segment_names(self) -> list[str]:
        return [name for name, _ in self.segments] if self.segments else ["all"]

    def segment_of(self, context: Context) -> int:
        """The segment row of a context: ``{"n_events": n}``, an event count, or a segment name."""
        if not self.segments or context is None:
            return 0
        if isinstance(context, Mapping):
            if "segment" in context:
                context = context["segment"]
            else:
                context = context.get("n_events", 0)
        if isinstance(context, str):
            names = self.segment_names
            if context not in names:
                raise ValueError(f"unknown segment {context!r}; segments are {names}")
            return names.index(context)
        n = float(context)
        for row, (_, bound) in enumerate(self.segments):
            if n < bound:
                return row
        return len(self.segments) - 1

    def _slot(self, slot: int) -> int:
        return min(max(int(slot), 0), self.n_slots - 1)

    # -- serving -------------------------------------------------------------------------
    def arm_scores(self, context: Context, n_slots: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """One score per (slot, arm), shape ``(n_slots, n_arms)``: serve each slot's best arm.

        Thompson: a draw from each arm's Beta posterior (fresh per slot); UCB1: the upper
        confidence bound (unplayed arms score infinity, ties broken at random).
        """
        return self._draw(self._posterior(self.segment_of(context), n_slots), self._rng if rng is None else rng)

    def arm_scores_many(
        self, contexts: Sequence[Context], n_slots: int, rngs: Sequence[np.random.Generator]
    ) -> list[np.ndarray]:
        """``arm_scores`` for several lists at once, one generator each (the same draws).

        The posterior of each segment is looked up once, not once per list.

        >>> bandit = SlotBandit(["a", "b"], n_slots=2, seed=0)
        >>> many = bandit.arm_scores_many([{"n_events": 0}, 50], 2, [np.random.default_rng(i) for i in (1, 2)])
        >>> one = bandit.arm_scores(50, 2, np.random.default_rng(2))
        >>> bool((many[1] == one).all()), many[0].shape
        (True, (2, 2))
        """
        posteriors: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        out = []
        for context, rng in zip(contexts, rngs):
            seg = self.segment_of(context)
            posterior = posteriors.get(seg)
            if posterior is None:
                posterior = posteriors[seg] = self._posterior(seg, n_slots)
            out.append(self._draw(posterior, rng))
        return out

    def _posterior(self, seg: int, n_slots: int) -> tuple[np.ndarray, np.ndarray | None]:
        """What a draw for the first ``n_slots`` slots of segment ``seg`` needs, per (slot,
        arm): the Beta parameters (Thompson), or the upper confidence bound and ``None`` (UCB1)."""
        slots = np.minimum(np.arange(max(int(n_slots), 0)), self.n_slots - 1)
        s, n = self._successes[seg, slots], self._trials[seg, slots]
        if self.policy == "thompson":
            a, b = self.prior
            # a peer's decay (``discount``) merged in may leave a statistic a little below 0
            return a + np.maximum(s, 0.0), b + np.maximum(n - s, 0.0)
        total = n.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = s / n + self.ucb_c * np.sqrt(2.0 * np.log(np.maximum(total, 1.0)) / n)
        return np.where(n > 0, bound, np.inf), None

    @staticmethod
    def _draw(posterior: tuple[np.ndarray, np.ndarray | None], rng: np.random.Generator) -> np.ndarray:
        alpha_or_bound, beta = posterior
        if beta is not None:
            return rng.beta(alpha_or_bound, beta)
        return alpha_or_bound + rng.random(alpha_or_bound.shape) * 1e-9  # random tie-break

    def choose(self, context: Context, n_slots: int, rng: np.random.Generator | None = None) -> list[str]:
        """The arm to serve in each of ``n_slots`` slots."""
        scores = self.arm_scores(context, n_slots, rng)
        return [self.arms[i] for i in scores.argmax(axis=1).tolist()]

    # -- learning ------------------------------------------------------------------------
    def update(self, context: Context, arm: str, reward: float, slot: int = 0) -> None:
        """Learn that ``arm``, served in ``slot`` to a user in ``context``, earned ``reward`` in [0, 1]."""
        i = self._arm_index.get(arm)
        if i is None:
            raise ValueError(f"unknown arm {arm!r}; arms are {self.arms}")
        reward = min(max(float(reward), 0.0), 1.0)
        seg, slot = self.segment_of(context), self._slot(slot)
        if self.discount is not None and self.discount < 1:
            self._successes[seg, slot] *= self.discount
            self._trials[seg, slot] *= self.discount
        self._successes[seg, slot, i] += reward
        self._trials[seg, slot, i] += 1.0
        self._rewards_total[i] += reward
        self._pulls_total[i] += 1

    # -- sharing between replicas ---------------------------------------------------------
    def _statistics(self) -> tuple[np.ndarray, ...]:
        return self._successes, self._trials, self._rewards_total, self._pulls_total

    def delta(self) -> dict[str, np.ndarray]:
        """What this bandit's own updates changed in its statistics since the last call, and
        starts a new tally; a replica with the same arms, slots and segments adds it with
        :meth:`merge_delta`.

        Returns
        -------
        dict
            ``cells`` (int64, flat positions in the (segment, slot, arm) statistics),
            ``successes`` and ``trials`` (float64, their gains); ``arms`` (int64 arm
            positions), ``rewards`` (float64) and ``pulls`` (int64), the gains of the
            all-time totals. Every array is empty when nothing changed.

        Notes
        -----
        Without ``discount`` the statistics are sums, so replicas that exchange deltas hold
        the sums of all their updates. With one, an update's decay of the statistics (the
        peers' part included) is a change like any other and travels as a negative gain,
        so the replicas approximate one bandit that saw every update.

        >>> one, two = SlotBandit(["a", "b"], n_slots=2), SlotBandit(["a", "b"], n_slots=2)
        >>> one.update(0, "a", 1.0, slot=1); two.update(0, "b", 0.0)
        >>> one.merge_delta(two.delta()); two.merge_delta(one.delta())
        >>> [b.stats()["arms"]["a"]["rewards"] for b in (one, two)], one.stats() == two.stats()
        ([1.0, 1.0], True)
        >>> [v.size for v in one.delta().values()]  # merged in: never reported again
        [0, 0, 0, 0, 0, 0]
        """
        reported = self._reported_statistics()
        succ, trials, rewards, pulls = self._statistics()
        rep_succ, rep_trials, rep_rewards, rep_pulls = reported
        cells = np.flatnonzero((succ != rep_succ) | (trials != rep_trials))
        arms = np.flatnonzero((rewards != rep_rewards) | (pulls != rep_pulls))
        out = {
            "cells": cells,
            "successes": succ.flat[cells] - rep_succ.flat[cells],
            "trials": trials.flat[cells] - rep_trials.flat[cells],
            "arms": arms,
            "rewards": rewards[arms] - rep_rewards[arms],
            "pulls": pulls[arms] - rep_pulls[arms],
        }
        self._reported = tuple(x.copy() for x in self._statistics())
        return out

    def merge_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's :meth:`delta` to the statistics (never part of this bandit's own)."""
        cells = np.asarray(delta.get("cells", ()), dtype=np.int64)
        arms = np.asarray(delta.get("arms", ()), dtype=np.int64)
        if not len(cells) and not len(arms):
            return
        if (len(cells) and cells.max() >= self._successes.size) or (len(arms) and arms.max() >= len(self.arms)):
            raise ValueError("a bandit delta from a bandit with other arms, slots or segments")
        self._reported_statistics()  # before the peer's sums mix in: what is here now is own
        succ = np.asarray(delta["successes"], dtype=np.float64)
        trials = np.asarray(delta["trials"], dtype=np.float64)
        rewards = np.asarray(delta["rewards"], dtype=np.float64)
        pulls = np.asarray(delta["pulls"], dtype=np.int64)
        for state in (self._statistics(), self._reported):  # the same sums: no own change appears
            state[0].flat[cells] += succ  # cells and arms are distinct: plain fancy-index adds
            state[1].flat[cells] += trials
            state[2][arms] += rewards
            state[3][arms] += pulls

    def _reported_statistics(self) -> tuple[np.ndarray, ...]:
        """``_reported``, started at zero: everything learned until sharing starts is own."""
        if getattr(self, "_reported", None) is None:  # checkpoints from before sharing lack it
            self._reported = tuple(np.zeros_like(x) for x in self._statistics())
        return self._reported

    # -- reading -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per arm: impressions learned (``pulls``), ``rewards``, ``mean`` reward and ``share``
        of impressions, all time; plus the posterior mean per segment and slot (``by_segment``).
        """
        total = int(self._pulls_total.sum())
        arms = {}
        for i, arm in enumerate(self.arms):
            pulls = int(self._pulls_total[i])
            arms[arm] = {
                "pulls": pulls,
                "rewards": float(self._rewards_total[i]),
                "mean": float(self._rewards_total[i] / pulls) if pulls else 0.0,
                "share": pulls / total if total else 0.0,
            }
        a, b = self.prior
        post = (a + self._successes) / (a + b + self._trials)
        by_segment = {
            name: {arm: [round(float(x), 6) for x in post[seg, :, i]] for i, arm in enumerate(self.arms)}
            for seg, name in enumerate(self.segment_names)
        }
        return {"policy": self.policy, "pulls": total, "arms": arms, "by_segment": by_segment}

    def shares(self) -> dict[str, float]:
        """Share of learned impressions per arm (all time)."""
        return {arm: s["share"] for arm, s in self.stats()["arms"].items()}

    def posterior_mean(self, context: Context = None, slot: int = 0) -> dict[str, float]:
        """Each arm's posterior mean reward for a context and slot."""
        seg, slot = self.segment_of(context), self._slot(slot)
        a, b = self.prior
        post = (a + self._successes[seg, slot]) / (a + b + self._trials[seg, slot])
        return {arm: float(p) for arm, p in zip(self.arms, post)}

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            "successes": self._successes, "trials": self._trials, "rewards_total": self._rewards_total,
            "pulls_total": self._pulls_total, "rng": self._rng.bit_generator.state,
            "reported": getattr(self, "_reported", None),  # so merged statistics never count as own
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = copy.deepcopy(dict(state))
        if state["successes"].shape != self._successes.shape:
            raise ValueError(f"state shape {state['successes'].shape} does not fit {self._successes.shape}")
        self._successes, self._trials = state["successes"], state["trials"]
        self._rewards_total, self._pulls_total = state["rewards_total"], state["pulls_total"]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._reported = state.get("reported")  # a state from before sharing has none

    def __repr__(self) -> str:
        return (f"SlotBandit(arms={self.arms!r}, policy={self.policy!r}, n_slots={self.n_slots}, "
                f"segments={self.segments!r}, prior={self.prior!r}, ucb_c={self.ucb_c}, "
                f"discount={self.discount!r}, seed={self.seed!r})")


def stable_hash(*parts: Any) -> int:
    """A hash of ``parts`` that is the same in every process (unlike ``hash`` of a string)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


# -- off-policy evaluation -------------------------------------------------------------


def ips_estimate(
    rewards: Sequence[float] | np.ndarray,
    target_probs: Sequence[float] | np.ndarray,
    logging_probs: Sequence[float] | np.ndarray,
    *,
    self_normalised: bool = False,
    clip: float | None = None,
) -> tuple[float, float]:
    """Inverse propensity scoring: the target policy's expected reward, from a logged policy.

    ``rewards[t]`` was earned by the logged action, which the logging policy chose with
    probability ``logging_probs[t]`` (> 0) and the target policy would choose with
    ``target_probs[t]``. The estimate is ``mean(r * w)`` with ``w = target / logging``,
    unbiased when the propensities are right; ``clip`` caps the weights (less variance,
    some bias); ``self_normalised`` divides by ``sum(w)`` instead of ``n`` (SNIPS).

    Returns ``(estimate, standard error)``.

    >>> est, se = ips_estimate([1, 0, 1, 1], [1, 0, 0, 1], [0.5, 0.5, 0.5, 0.5])
    >>> est
    1.0
    """
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(target_probs, dtype=np.float64)
    q = np.asarray(logging_probs, dtype=np.float64)
    if not (len(r) == len(p) == len(q)):
        raise ValueError("rewards, target_probs and logging_probs must have the same length")
    if len(r) == 0:
        return 0.0, 0.0
    if np.any(q <= 0):
        raise ValueError("logging propensities must be positive")
    w = p / q
    if clip is not None:
        w = np.minimum(w, clip)
    terms = r * w
    n = len(r)
    if self_normalised:
        total = w.sum()
        if total <= 0:
            return 0.0, 0.0
        est = terms.sum() / total
        se = math.sqrt(float(((w * (r - est)) ** 2).sum())) / total
        return float(est), float(se)
    return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def ips_value(
    policy: Callable[[Any], Mapping[Any, float] | Any],
    logs: Iterable[tuple[Any, Any, float, float]],
    **kwargs: Any,
) -> tuple[float, float]:
    """IPS value of ``policy`` on logged ``(context, action, reward, propensity)`` records.

    ``policy(context)`` returns either a mapping action -> probability (a stochastic
    policy) or a single action (a deterministic one). Keyword arguments go to
    :func:`ips_estimate`.
    """
    rewards, target, logging = [], [], []
    for context, action, reward, propensity in logs:
        choice = policy(context)
        prob = float(choice.get(action, 0.0)) if isinstance(choice, Mapping) else float(choice == action)
        rewards.append(reward)
        target.append(prob)
        logging.append(propensity)
    return ips_estimate(rewards, target, logging, **kwargs)
