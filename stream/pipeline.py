"""The worker's processor, without Kafka or Redis: records and state in, a batch of effects out.

In the Kafka Streams / Flink spirit, :class:`Pipeline` is a function of the records it is
given and the state it holds; a shell (``stream.worker``) polls the records, writes the
effects and commits. Per batch of event records and control commands:

1. parse each record into an event, or a dead letter with its reason (errors are data);
2. drop duplicates (an ``event_id`` seen recently on the same partition);
3. credit a click to the impression that showed its item (``recomm_id``);
4. learn: item metadata, then popularity and the model (``learn_many``);
5. obey control commands (forget a user);
6. rank the touched users, explain their lists, refresh the popular and similar-item lists.

The :class:`Effects` say what should now be durable: lists, popular list, similar lists,
counters, dead letters, explanations, forgotten users, item metadata. Idle users and
items are forgotten on :meth:`Pipeline.expire_idle` (the shell calls it at checkpoints).

What a model can do beyond the contract is read once from its declared capabilities
(``online_models.capabilities``), never by calling and catching.

>>> import orjson
>>> from core.settings import Settings
>>> from online_models.cooc import Cooc
>>> pipeline = Pipeline(Settings(_env_file=None, topic="t"), Cooc())
>>> view = lambda offset, item: Record("t", 0, offset, 0, b"u", orjson.dumps(
...     {"user_id": "u", "item_id": item, "type": "view", "ts": 1.0}))
>>> effects = pipeline.process([view(0, "a"), view(1, "b"), Record("t", 0, 2, 0, b"u", b"{")])
>>> effects.counts
Counts(consumed=3, applied=2, dead_lettered=1, deduplicated=0)
>>> [reject.reason[:16] for reject in effects.dead_letters], sorted(effects.lists)
(['not valid JSON: '], ['u'])
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import compress, count, groupby, islice, pairwise, repeat
from operator import gt
from typing import Any, Protocol

import numpy as np
import orjson

from core.errors import InvalidEvent
from core.keys import ListBatch
from core.metrics import Exposures, WorkerMetrics
from core.schema import ITEM_TYPE, Event, parse_events
from core.settings import Settings
from online_models import Recommender
from online_models._arrays import IdIndex, RankedRows, excluded_cells, per_row
from online_models.capabilities import (
    Explains,
    ExplainsRows,
    ForgetsItems,
    ForgetsUsers,
    HandsOverUsers,
    LearnsItems,
    RanksRows,
    ReportsArms,
    ReportsSizes,
    SharesItems,
    SimilarItems,
    UsesPopularity,
)
from online_models.trending import Trending

log = logging.getLogger("streamrec.pipeline")

Ranking = list[tuple[str, float]]


@dataclass(frozen=True)
class Capabilities:
    """What a model does beyond the contract, read once from its declarations."""

    learns_items: bool  # item metadata
    explains: bool
    explains_rows: bool  # a batch of lists at once (explain_rows)
    similar_items: bool
    forgets_users: bool
    forgets_items: bool
    hands_over_users: bool
    shares_items: bool
    reports_arms: bool
    ranks_rows: bool  # ranks a batch on arrays (recommend_rows)

    @classmethod
    def of(cls, model: Recommender) -> Capabilities:
        return cls(learns_items=isinstance(model, LearnsItems), explains=isinstance(model, Explains),
                   explains_rows=isinstance(model, ExplainsRows),
                   similar_items=isinstance(model, SimilarItems), forgets_users=isinstance(model, ForgetsUsers),
                   forgets_items=isinstance(model, ForgetsItems), hands_over_users=isinstance(model, HandsOverUsers),
                   shares_items=isinstance(model, SharesItems), reports_arms=isinstance(model, ReportsArms),
                   ranks_rows=isinstance(model, RanksRows))


class RecordLike(Protocol):
    """What the pipeline reads of a record (a kafka-python ``ConsumerRecord`` is one)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Record:
    """A plain record: what a Kafka consumer hands over, without Kafka (``timestamp`` in ms)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class Reject:
    """A record that goes to the dead-letter topic, and why."""

    record: RecordLike
    reason: str


@dataclass
class Counts:
    consumed: int = 0
    applied: int = 0
    dead_lettered: int = 0
    deduplicated: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class PartitionState:
    """What the pipeline knows of one partition: where to resume, its counts, recent ids, and
    its users (whose state moves with the partition)."""

    next_offset: int = 0
    counts: Counts = field(default_factory=Counts)
    recent_ids: deque = field(default_factory=deque)
    recent_set: set = field(default_factory=set)
    users: set = field(default_factory=set)

    def is_duplicate(self, event_id: str, window: int) -> bool:
        """True when ``event_id`` came within the last ``window`` ids; remembers it otherwise."""
        if event_id in self.recent_set:
            return True
        if window:
            self.recent_ids.append(event_id)
            self.recent_set.add(event_id)
            if len(self.recent_ids) > window:
                self.recent_set.discard(self.recent_ids.popleft())
        return False

    def fresh(self, events: list[Event], window: int) -> list[Event]:
        """The ``events`` that are not duplicates, as ``is_duplicate`` says of each in turn.

        When their ids are new and distinct (the common case) they are remembered at once:
        ``is_duplicate`` would append each and drop one old id per append past ``window``.
        """
        recent_ids, recent_set = self.recent_ids, self.recent_set
        ids = [event.event_id for event in events]
        if not recent_set.isdisjoint(ids) or len(set(ids)) < len(ids):
            return [event for event, event_id in zip(events, ids) if not self.is_duplicate(event_id, window)]
        if window:
            dropped = min(len(ids), max(0, len(recent_ids) + len(ids) - window))
            recent_ids.extend(ids)
            recent_set.update(ids)
            popleft = recent_ids.popleft
            recent_set.difference_update([popleft() for _ in range(dropped)])
        return events


@dataclass
class Effects:
    """What one batch changed that must become durable before its offsets are committed."""

    counts: Counts  # this batch's
    model: str  # the name the lists are stored under
    written_at: float  # wall time the lists were computed
    lists: ListBatch = field(default_factory=lambda: ListBatch.of_rankings({}))  # user -> ranking, seen flagged
    explanations: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    popular: Ranking | None = None  # None: not due for a refresh
    similar: dict[str, Ranking] | None = None
    counters: dict[str, int] = field(default_factory=dict)  # absolute, "<count>:<partition>"
    item_metadata: dict[str, dict] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    dead_letters: list[Reject] = field(default_factory=list)
    touched_items: set[str] = field(default_factory=set)  # items this batch's events learned
    history: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)  # user -> (item, type, ts)

    @property
    def seen_flags(self) -> dict[str, list[bool]]:
        """User id -> per item of their list, whether they have seen it."""
        return self.lists.flags


def parse_records(records: Sequence[RecordLike], max_event_bytes: int, now: float | None = None
                  ) -> list[Event | InvalidEvent]:
    """Each record's event (``core.schema.parse_events``: one ``now`` for all), or the
    ``InvalidEvent`` that says why not: a missing ``ts`` is the broker's timestamp, a missing
    ``event_id`` the record's place in the log (so a re-read record gets the same id)."""
    return parse_events(
        [record.value for record in records],
        [record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else None for record in records],
        [f"{record.topic}/{record.partition}/{record.offset}" for record in records],
        max_bytes=max_event_bytes, now=now,
    )


def idle(last_active: dict[str, float], expiry_s: float | None, newest: float | None = None) -> list[str]:
    """The ids whose newest event is more than ``expiry_s`` older than ``newest`` (default:
    the newest of all).

    >>> idle({"a": 0.0, "b": 5.0, "c": 10.0}, 6.0)
    ['a']
    """
    if expiry_s is None or not last_active:
        return []
    horizon = (max(last_active.values()) if newest is None else newest) - expiry_s
    return [key for key, ts in last_active.items() if ts < horizon]


class Pipeline:
    """Learns from batches of records and says what to write; holds all learned state.

    Parameters
    ----------
    settings
        What it reads: ``top_k``, ``seen_types``, ``dedupe_window``, ``max_event_bytes``,
        ``online_eval_k``, ``impressions_window``, ``similar_k``, the refresh periods and
        the idle expiries.
    model
        The served model. Models that declare ``UsesPopularity`` are handed the pipeline's
        one popularity (a ``Trending``), which learns each batch before the model does.
    metrics
        Where online HR, attributed clicks and the bandit's arms are counted.
    clock
        Wall time, for the refresh periods and ``Effects.written_at``.
    """

    def __init__(self, settings: Settings, model: Recommender, metrics: WorkerMetrics | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.clock = clock
        self.model = model
        self.popularity = Trending()
        self.seen: dict[str, set[str]] = {}
        self.last_active: dict[str, float] = {}  # user -> newest event time
        self.item_last_active: dict[str, float] = {}  # item -> newest event time
        self.partitions: dict[int, PartitionState] = {}
        self.control_offsets: dict[str, dict[int, int]] = {}  # side topic -> partition -> next offset
        self.impressions: OrderedDict[str, dict[str, tuple[str, int]]] = OrderedDict()
        self.exposures = Exposures()  # items served, counted from the impressions read, until written
        self._last_lists: dict[str, set[str]] = {}  # for online evaluation; not checkpointed
        self._items_expired_at = float("-inf")  # event time of the last item expiry
        self._popular_written_at = 0.0
        self._similar_written_at = 0.0
        self._items_touched: set[str] = set()  # since the last similar-item refresh
        self._bind()

    def _bind(self) -> None:
        """Read the model's capabilities (once per model) and hand it the popularity."""
        model = self.model
        if isinstance(model, UsesPopularity):
            model.use_popularity(self.popularity)
        self.can = Capabilities.of(model)
        if self.settings.similar_k and not self.can.similar_items:
            log.warning("model %s has no item similarity: no similar-item lists", model.name)
        if not self.can.forgets_users:
            log.warning("model %s cannot forget a user: only the worker's own records of them go", model.name)

    # -- state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything learned, as live objects (a checkpoint pickles them at once)."""
        return {"model": self.model, "popularity": self.popularity, "seen": self.seen,
                "last_active": self.last_active, "item_last_active": self.item_last_active,
                "partitions": self.partitions, "control_offsets": self.control_offsets,
                "impressions": self.impressions}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a ``state()`` (a restored checkpoint)."""
        self.model = state["model"]
        # checkpoints from before the one popularity held none when the model was it
        self.popularity = state["popularity"] if state["popularity"] is not None else copy.deepcopy(self.model)
        self.seen = state["seen"]
        self.last_active = state["last_active"]
        self.item_last_active = state["item_last_active"]
        self.partitions = state["partitions"]
        self.control_offsets = state["control_offsets"]
        self.impressions = state["impressions"]
        self._bind()

    @property
    def totals(self) -> Counts:
        totals = Counts()
        for state in self.partitions.values():
            totals.add(state.counts)
        return totals

    def state_sizes(self) -> dict[str, int]:
        """How many ids each table holds (what expiry bounds)."""
        return {"users": len(self.last_active), "items": len(self.item_last_active),
                "seen_entries": sum(map(len, self.seen.values())), "impressions": len(self.impressions),
                **{f"model_{name}": n for name, n in (
                    self.model.state_sizes() if isinstance(self.model, ReportsSizes) else {}).items()}}

    # -- partitions move between workers -----------------------------------------------
    def adopt_partition(self, p: int, peer: dict[str, Any]) -> None:
        """Take partition ``p``'s users and position from a peer's ``state()``."""
        if p in self.partitions:
            self.drop_partition(p)
        state = peer["partitions"][p]
        if self.can.hands_over_users:
            self.model.import_users(peer["model"].export_users(state.users))
        if peer["popularity"] is not None:
            self.popularity.import_users(peer["popularity"].export_users(state.users))
        for user_id in state.users:
            if user_id in peer["seen"]:
                self.seen[user_id] = peer["seen"][user_id]
            if user_id in peer["last_active"]:
                self.last_active[user_id] = peer["last_active"][user_id]
        self.partitions[p] = state
        log.info("partition %d: took %d users over at offset %d", p, len(state.users), state.next_offset)

    def drop_partition(self, p: int) -> None:
        """Forget partition ``p`` and its users (another worker serves them now)."""
        for user_id in self.partitions.pop(p).users:
            self.forget_user(user_id)

    # -- forgetting --------------------------------------------------------------------
    def forget_user(self, user_id: str) -> None:
        """Drop what the pipeline and its model know of one user (not their stored list)."""
        self.last_active.pop(user_id, None)
        self.seen.pop(user_id, None)
        self._last_lists.pop(user_id, None)
        for state in self.partitions.values():
            state.users.discard(user_id)
        if self.can.forgets_users:
            self.model.forget_user(user_id)

    def forget_items(self, item_ids: list[str]) -> None:
        """Drop what the model learned of these items (their similar-item lists expire)."""
        if not item_ids:
            return
        for item_id in item_ids:
            self.item_last_active.pop(item_id, None)
        if self.can.forgets_items:
            self.model.forget_items(item_ids)
        self.popularity.forget_items(item_ids)

    def expire_idle(self) -> None:
        """Forget users idle longer than ``user_idle_expiry_s`` and items idle longer than
        ``item_idle_expiry_s`` (event time), so memory stays bounded on an endless stream.

        Items go in one batch at most every tenth of their expiry time: forgetting items
        costs the model a pass over its users, however many items go.
        """
        users = idle(self.last_active, self.settings.user_idle_expiry_s)
        for user_id in users:
            self.forget_user(user_id)
        items: list[str] = []
        expiry_s = self.settings.item_idle_expiry_s
        newest = max(self.item_last_active.values(), default=None)
        if expiry_s is not None and newest is not None and newest - self._items_expired_at >= expiry_s / 10:
            items = idle(self.item_last_active, expiry_s, newest)
            self._items_expired_at = newest
            self.forget_items(items)
        if users or items:
            log.info("forgot %d idle users and %d idle items", len(users), len(items))

    # -- side records ------------------------------------------------------------------
    def _advance(self, record: RecordLike) -> None:
        self.control_offsets.setdefault(record.topic, {})[record.partition] = record.offset + 1

    def remember_impressions(self, records: Iterable[RecordLike],
                             counts: Callable[[int], bool] = lambda partition: True) -> list[Reject]:
        """Keep the recent impressions (recomm_id -> item -> (strategy, position)), bounded;
        returns the malformed records. The items served in records of the partitions that
        ``counts`` takes (each worker counts its own) go to ``exposures`` and to the metrics'
        ``shown`` per strategy."""
        rejects = []
        shown = self.metrics.shown
        for record in records:
            self._advance(record)
            try:
                payload = orjson.loads(record.value or b"")
                counted = counts(record.partition)
                for impression in payload if isinstance(payload, list) else [payload]:  # the API sends arrays
                    served = {i["item_id"]: (i["strategy"], i["position"]) for i in impression["items"]}
                    self.impressions[impression["recomm_id"]] = served
                    if counted:
                        self.exposures.add(impression.get("ts") or time.time(), served)
                        for strategy, _ in served.values():
                            shown[strategy or "unknown"] = shown.get(strategy or "unknown", 0) + 1
            except (ValueError, KeyError, TypeError) as exc:
                rejects.append(Reject(record, f"bad impression: {exc}"))
            while len(self.impressions) > self.settings.impressions_window:
                self.impressions.popitem(last=False)
        return rejects

    def _obey(self, commands: Iterable[RecordLike], rejects: list[Reject]) -> set[str]:
        """Apply control commands (``{"action": "forget_user", "user_id": ...}``); returns the
        users forgotten. A malformed command is rejected like a malformed event."""
        forgotten = set()
        for record in commands:
            self._advance(record)
            try:
                command = orjson.loads(record.value or b"")
                if not isinstance(command, dict) or command.get("action") != "forget_user":
                    raise ValueError("unknown command")
                user_id = command["user_id"]
                if not isinstance(user_id, str):
                    raise ValueError("user_id must be a string")
            except (ValueError, KeyError) as exc:
                rejects.append(Reject(record, f"bad control command: {exc}"))
                continue
            self.forget_user(user_id)
            forgotten.add(user_id)
        return forgotten

    def _attribute(self, event: Event) -> Event:
        """An event that names the answer it came from learns which strategy served its item."""
        recomm_id = (event.context or {}).get("recomm_id")
        served = self.impressions.get(recomm_id) if isinstance(recomm_id, str) else None
        if served is None or event.item_id not in served:
            return event
        strategy, position = served[event.item_id]
        self.metrics.attributed += 1
        self.metrics.clicks[strategy or "unknown"] = self.metrics.clicks.get(strategy or "unknown", 0) + 1
        return dataclasses.replace(event, context={**event.context, "strategy": strategy, "slot": position})

    # -- the batch ---------------------------------------------------------------------
    def process(self, records: Sequence[RecordLike], commands: Sequence[RecordLike] = ()) -> Effects:
        """Learn one batch of event records and control commands; returns what to write."""
        settings, model = self.settings, self.model
        counts = Counts(consumed=len(records))
        rejects: list[Reject] = []
        events: list[Event] = []
        event_users: list[str] = []  # each event's user, in order
        item_metadata: dict[str, dict] = {}
        touched_users: dict[str, None] = {}  # in order
        touched_items: set[str] = set()
        touched_partitions = set()
        window, partitions, learns_items = settings.dedupe_window, self.partitions, self.can.learns_items
        parsed = parse_records(records, settings.max_event_bytes)
        start = 0
        for p, run in groupby([record.partition for record in records]):  # records come partition by partition
            end = start + len(list(run))
            state = partitions.get(p)
            if state is None:
                state = partitions[p] = PartitionState()
            touched_partitions.add(p)
            state_counts = state.counts
            state_counts.consumed += end - start
            state.next_offset = records[end - 1].offset + 1
            found = parsed[start:end]
            if any(map(isinstance, found, repeat(InvalidEvent))):
                for record, event in zip(records[start:end], found):
                    if isinstance(event, InvalidEvent):
                        rejects.append(Reject(record, event.reason))
                found = [event for event in found if not isinstance(event, InvalidEvent)]
                state_counts.dead_lettered += end - start - len(found)
            start = end
            fresh = state.fresh(found, window)
            state_counts.deduplicated += len(found) - len(fresh)
            counts.deduplicated += len(found) - len(fresh)
            state_counts.applied += len(fresh)
            if any(event.context is not None or event.type == ITEM_TYPE for event in fresh):
                plain = []
                for event in fresh:
                    if event.context is not None:
                        event = self._attribute(event)
                    if event.type == ITEM_TYPE:
                        item_metadata[event.item_id] = event.context or {}
                        if learns_items:
                            model.learn_item(event.item_id, item_metadata[event.item_id])
                    else:
                        plain.append(event)
                fresh = plain
            users = [event.user_id for event in fresh]
            state.users.update(users)
            touched_users.update(zip(users, repeat(None)))
            events += fresh
            event_users += users
        counts.dead_lettered = len(rejects)
        counts.applied = counts.consumed - counts.dead_lettered - counts.deduplicated
        if events:  # online HR@k: was the item in the user's last list?
            users, items = event_users, [event.item_id for event in events]
            lasts = list(map(self._last_lists.get, users))
            self.metrics.online_evaluated += len(lasts) - lasts.count(None)
            self.metrics.online_hits += sum(item_id in last for item_id, last in zip(items, lasts) if last is not None)
            self.popularity.learn_many(events)  # first: a model that uses it reads it
            model.learn_many(events)
            touched_items.update(items)
            seen_types, seen = settings.seen_types, self.seen
            for event in events:
                if event.type in seen_types:
                    user_seen = seen.get(event.user_id)
                    if user_seen is None:
                        seen[event.user_id] = {event.item_id}
                    else:
                        user_seen.add(event.item_id)
            times = [event.ts for event in events]
            _note_newest(self.last_active, users, times)
            _note_newest(self.item_last_active, items, times)
        forgotten = self._obey(commands, rejects)
        users = [u for u in touched_users if u not in forgotten and u in self.last_active]
        lists, ranked = self._rank(users)
        explanations = {}
        if self.can.explains_rows and ranked is not None and lists:  # all lists at once
            explanations = dict(zip(lists, model.explain_rows(lists.users, ranked.rows, ranked.index)))
        elif self.can.explains:
            explanations = {user_id: model.explain_items(user_id, lists.items_of(user_id)) for user_id in lists}
        now = self.clock()
        popular = None
        if events and now - self._popular_written_at >= settings.popular_refresh_s:
            popular = self.popularity.top(settings.top_k)
            self._popular_written_at = now
        if self.can.reports_arms:
            arms = model.stats()["arms"]
            self.metrics.bandit_arms = {a: {k: arms[a][k] for k in ("pulls", "rewards", "share")} for a in arms}
        history: dict[str, list[tuple[str, str, float]]] = {}
        if settings.user_history_events:  # the users' events of this batch, for the dashboard
            listed = set(lists)
            for event in events:
                if event.user_id in listed:
                    history.setdefault(event.user_id, []).append((event.item_id, event.type, event.ts))
        return Effects(counts=counts, model=model.name, written_at=now, lists=lists, history=history,
                       explanations=explanations, popular=popular, similar=self._similar_lists(touched_items, now),
                       counters=self._counters(touched_partitions), item_metadata=item_metadata,
                       forgotten=forgotten, dead_letters=rejects, touched_items=touched_items)

    def _rank(self, users: list[str]) -> tuple[ListBatch, RankedRows | None]:
        """Each user's ranking with their seen items left in but flagged, so a request can
        include or exclude them: ``top_k`` unseen items, and the seen ones ranked among them.

        Cut and flagged on arrays, for all users at once: a model that ranks on arrays
        (``RanksRows``) gives them, another's plain lists are put in arrays first. Returns
        the lists and, from a model that ranks on arrays, the same lists as item rows of the
        index that names them.
        """
        top_k = self.settings.top_k
        depth = top_k + min(top_k, max(map(len, map(self.seen.get, users, repeat(()))), default=0))
        if self.can.ranks_rows:
            ranked = self.model.recommend_rows(users, depth)
            return self._cut(users, ranked.rows, ranked.scores, ranked.index)
        rankings = self.model.recommend_many(users, depth)
        ranked = RankedRows.of_rankings(list(rankings.values()), IdIndex(), depth)  # in an index of their own
        return self._cut(list(rankings), ranked.rows, ranked.scores, ranked.index)[0], None

    def _cut(self, users: list[str], rows: np.ndarray, scores: np.ndarray, index: IdIndex
             ) -> tuple[ListBatch, RankedRows]:
        """Flag the seen items of each user's ranked rows (best first, ``-1`` after the list)
        and cut each list after its ``top_k``-th unseen item (or keep it whole when it has
        fewer); remember each user's first ``online_eval_k`` unseen items for online HR."""
        top_k, eval_k = self.settings.top_k, self.settings.online_eval_k
        n_users, width = rows.shape
        listed = rows >= 0
        marks = _seen_cells(rows, index, users, self.seen)
        unseen = listed if marks is None else listed & ~marks
        counted = np.cumsum(unseen, axis=1, dtype=np.int32)
        lengths = listed.sum(axis=1)
        if width:
            full = counted[:, -1] >= top_k
            cut = np.where(full, np.argmax(counted >= top_k, axis=1) + 1, lengths)
        else:
            cut = lengths
        w = int(cut.max(initial=0))
        kept = np.arange(w) < cut[:, None]
        rows_kept = rows[:, :w]
        id_of = _id_lookup(index.ids, int(kept.sum()))
        flat = id_of(rows_kept[kept])
        if eval_k:
            shown = kept & unseen[:, :w] & (counted[:, :w] <= eval_k)
            shown_ids = id_of(rows_kept[shown])  # row after row, as per_row cuts them
            sizes = shown.sum(axis=1)
            size = int(sizes[0]) if n_users and (sizes == sizes[0]).all() else None
            if size is None:
                chunks = per_row(shown_ids, shown)
            elif size:  # as many for every user (the common case): cut in C
                chunks = zip(*[iter(shown_ids)] * size)
            else:
                chunks = repeat(())
            self._last_lists.update(zip(users, map(set, chunks)))
        scores = scores[:, :w]
        if marks is not None:
            marks = marks[:, :w] & kept
            marks = marks if marks.any() else None
        lists = ListBatch(users, flat, cut.tolist(), scores, marks)
        return lists, RankedRows(np.where(kept, rows_kept, -1), np.where(kept, scores, -np.inf), index)

    def _counters(self, partitions: Iterable[int]) -> dict[str, int]:
        """Absolute counts of ``partitions``, as Redis hash fields."""
        return {f"{f.name}:{p}": getattr(self.partitions[p].counts, f.name)
                for p in partitions if p in self.partitions for f in fields(Counts)}

    def _similar_lists(self, items: set[str], now: float) -> dict[str, Ranking] | None:
        """Similar-item lists of the items touched since the last refresh, when one is due."""
        if not (self.settings.similar_k and self.can.similar_items):
            return None
        self._items_touched.update(items)
        if not self._items_touched or now - self._similar_written_at < self.settings.similar_refresh_s:
            return None
        similar = {i: self.model.similar_items(i, self.settings.similar_k) for i in self._items_touched}
        self._items_touched = set()
        self._similar_written_at = now
        return similar


def _note_newest(newest: dict[str, float], keys: list[str], times: list[float]) -> None:
    """``newest[key] = max(newest.get(key, 0.0), ts)`` (ties to ``ts``) for each key and time
    in turn; in one go for each stretch of times in order, when the stretches are long (as a
    batch's partitions, one after the other, each mostly in order): a key's last time in a
    stretch is its newest there.

    >>> newest = {"a": 5.0, "b": 1.0}
    >>> _note_newest(newest, ["b", "c", "a", "b"], [2.0, 3.0, 3.0, 4.0]); newest
    {'a': 5.0, 'b': 4.0, 'c': 3.0}
    >>> _note_newest(newest, ["c", "a"], [9.0, 6.0]); newest
    {'a': 6.0, 'b': 4.0, 'c': 9.0}
    """
    starts = [0, *compress(count(1), map(gt, times, islice(times, 1, None))), len(times)]  # where time goes back
    if len(starts) - 1 > 1 + len(times) // STRETCH_EVENTS:
        for key, ts in zip(keys, times):
            newest[key] = max(ts, newest.get(key, 0.0))  # ties to ts
        return
    for start, end in pairwise(starts):
        last = dict(zip(keys[start:end], times[start:end]))
        before = list(map(newest.get, last, repeat(0.0)))
        newest.update(last)
        if any(map(gt, before, last.values())):
            for key, was, ts in zip(last, before, last.values()):
                if was > ts:
                    newest[key] = was


STRETCH_EVENTS = 16
"""``_note_newest`` notes stretches in one go when they are this long on average (or there is one)."""


def _seen_cells(rows: np.ndarray, index: IdIndex, users: Sequence[str],
                seen: Mapping[str, Collection[str]]) -> np.ndarray | None:
    """Which cells of ``rows`` (``users``' ranked item rows of ``index``, ``-1`` past a list)
    hold an item the user has seen (``seen``: user -> ids); None when none can.

    Users have seen few items each, mostly: each seen item is compared with its user's row
    of cells; with many, each cell's ``(user, row)`` key is looked up among the seen ones'.

    >>> index = IdIndex(); _ = index.add("a"), index.add("b"), index.add("c")
    >>> _seen_cells(np.array([[0, 1, -1], [2, 0, 1]]), index, ["u", "v"], {"u": {"b", "zz"}}).astype(int).tolist()
    [[0, 1, 0], [0, 0, 0]]
    """
    n_users, width = rows.shape
    if not width:
        return None
    at_user, at_row = excluded_cells(index, users, seen)
    if not len(at_row):
        return None
    if len(at_row) <= SEEN_COMPARED_PER_USER * n_users:
        which, at_cell = np.nonzero(rows[at_user] == at_row[:, None])
        marks = np.zeros((n_users, width), dtype=bool)
        marks[at_user[which], at_cell] = True
        return marks
    n = max(len(index), 1)
    seen_keys = np.sort(at_user * n + at_row)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n + rows
    found = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    return (seen_keys[found] == keys) & (rows >= 0)


SEEN_COMPARED_PER_USER = 4
"""``_seen_cells`` compares each seen item with its user's cells while there are at most
this many per user on average (cheaper than sorting and searching every cell's key)."""


def _id_lookup(ids: list[str | None], n: int) -> Callable[[np.ndarray], list[str | None]]:
    """``rows -> [ids[r] for r in rows]`` for about ``n`` rows in all: one C gather through an
    object array, unless the index holds many more ids than there are rows to look up
    (converting it would cost more).

    >>> _id_lookup(["a", "b"], 3)(np.array([1, 1, 0])), _id_lookup(["a"] * 9, 1)(np.array([0]))
    (['b', 'b', 'a'], ['a'])
    """
    if len(ids) <= 2 * n:
        table = np.array(ids, dtype=object)
        return lambda rows: table[rows].tolist()
    return lambda rows: list(map(ids.__getitem__, rows.tolist()))
