"""The batched ranking paths of the embeddings, river-mf, purchase-rerank and blend models
give what the plain one-user paths give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from online_models._arrays import top_k_per_user


def _reference(scores: np.ndarray, k: int) -> list[tuple[list[int], list[float]]]:
    """Per row: the ``k`` best scores above -inf (NaN never ranks), score descending, row ascending."""
    out = []
    for row in scores:
        ranked = sorted((-v, r) for r, v in enumerate(row.tolist()) if v > -math.inf)[:k]
        out.append(([r for _, r in ranked], [-v for v, _ in ranked]))
    return out


@pytest.mark.parametrize("n", [1, 7, 300, 5000, 20_011])
@pytest.mark.parametrize("k", [1, 10, 60, 100])  # 60 and 100: mid-sized catalogues in groups of 8 too
def test_top_k_per_user_matches_a_full_sort(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    users = 9  # users x items
    scores = rng.normal(size=(users, n)).astype(np.float32)
    scores[1] = np.round(scores[1])  # many ties
    scores[2] = 0.5  # all tied
    scores[rng.random((users, n)) < 0.3] = -np.inf  # excluded items
    scores[3] = -np.inf  # everything excluded
    scores[4, rng.integers(0, n)] = np.nan
    scores[5, : n // 2] = -np.inf  # the best items sit in the last groups
    scores[6] = np.arange(n, dtype=np.float32)  # the last group is the best one
    before = scores.copy()
    got = top_k_per_user(scores, k)
    assert got == _reference(scores, k)
    assert np.array_equal(scores, before, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # float32: _top_k_bounded from 16 k items
@pytest.mark.parametrize("n", [1700, 30_000])
def test_top_k_per_user_of_both_float_types_matches_a_full_sort(dtype, n: int) -> None:
    rng = np.random.default_rng(n)
    k, users = 100, 12
    scores = (rng.normal(size=(users, 8)) @ rng.normal(size=(8, n))).astype(dtype)
    scores[1] = np.round(scores[1])  # ties at the cut
    scores[2, ::2] = -0.0  # -0.0 ties with 0.0: the lower row first
    scores[2, 1::2] = 0.0
    scores[3, rng.integers(0, n, 5)] = np.inf
    scores[4, : n - 150] = -np.inf  # fewer groups than k hold a rankable item
    scores[5, : n - 50] = -np.inf  # fewer than k rankable items
    scores[6, 7] = np.nan
    scores[7] = -scores[7] - 1e6  # all negative
    scores[8, n // 2 :] = scores[8, : n - n // 2] = np.sort(scores[8, : n - n // 2])  # each score twice
    before = scores.copy()
    got = top_k_per_user(scores, k)
    assert got == _reference(scores, k)
    assert np.array_equal(scores, before, equal_nan=True)
    signs = [[math.copysign(1.0, v) for v in vals] for _, vals in got]
    assert signs == [[math.copysign(1.0, v) for v in vals] for _, vals in _reference(scores, k)]  # -0.0 stays


def test_top_k_of_a_block_of_ties_sorts_crowded_rows_on_their_own(monkeypatch) -> None:
    """Equal scores en masse (a cold user's bias, content scores without popularity): the
    rows whose bound a mass of ties reaches are sorted one by one, not all in one sort."""
    from online_models import _arrays

    rng = np.random.default_rng(3)
    n, k, users = 20_000, 10, 40
    scores = np.zeros((users, n), dtype=np.float32)  # all tied
    scores[::4] = rng.integers(0, 2, size=(10, n))  # two values
    scores[1::4] = rng.normal(size=(10, n))  # distinct scores: the one sort
    selected = []
    flat_true = _arrays._flat_true
    monkeypatch.setattr(_arrays, "_flat_true", lambda mask: selected.append(flat_true(mask)) or selected[-1])
    got = top_k_per_user(scores, k)
    assert got == _reference(scores, k)
    assert len(selected) == 1 and len(selected[0]) <= 10 * (_arrays._CROWDED_PER_K * k + _arrays._CROWDED_SLACK)


def _autograd_step(model, users, items, hists, weights, negatives, neg_probs) -> None:
    """The embeddings' gradient step with torch autograd: the reference for the hand-written one."""
    mask = hists >= 0
    hist_w = model._powers[None, :] * mask
    hist_w /= np.maximum(hist_w.sum(1, keepdims=True), 1e-12)
    rows = {"user": users, "in": hists[mask], "out": np.concatenate([items, negatives])}
    rows["bias"] = rows["out"]
    tables = {"user": model._user_vecs, "in": model._item_in, "out": model._item_out, "bias": model._item_bias}
    leaves = {name: tables[name].clone().requires_grad_() for name in tables}
    hist_vecs = torch.zeros(hists.shape + (model.n_factors,))
    hist_vecs[torch.from_numpy(mask)] = leaves["in"][torch.from_numpy(hists[mask])]
    reps = leaves["user"][torch.from_numpy(users)] + (torch.from_numpy(hist_w)[:, :, None] * hist_vecs).sum(1)
    out = leaves["out"][torch.from_numpy(rows["out"])]
    bias = leaves["bias"][torch.from_numpy(rows["out"])][:, 0]
    b = len(items)
    pos = (reps * out[:b]).sum(1) + bias[:b]
    neg = reps @ out[b:].T + bias[b:][None, :]
    hit = torch.from_numpy(items[:, None] == negatives[None, :])
    if model.loss == "softmax":
        log_q = torch.from_numpy(np.log(neg_probs * len(negatives)).astype(np.float32))
        logits = torch.cat([pos[:, None], (neg - log_q).masked_fill(hit, -torch.inf)], 1)
        losses = torch.logsumexp(logits, 1) - logits[:, 0]
    else:
        diff = torch.nn.functional.logsigmoid(pos[:, None] - neg).masked_fill(hit, 0.0)
        losses = -diff.sum(1) / (~hit).sum(1).clamp(min=1)
    w = torch.from_numpy(weights)
    loss = (losses * w).sum() / w.sum()
    for name in tables:
        used = torch.from_numpy(np.unique(rows[name]))
        loss = loss + model.l2 * (leaves[name][used] ** 2).sum() / b
    loss.backward()
    with torch.no_grad():
        for name, table in tables.items():
            used = torch.from_numpy(np.unique(rows[name]))
            grad = leaves[name].grad[used]
            acc = model._acc[name]
            acc[used] += (grad**2).mean(1)
            table[used] = table[used] - model.lr * grad / (acc[used].sqrt() + 1e-8)[:, None]


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_embeddings_gradient_step_matches_autograd(loss: str, l2: float) -> None:
    import copy

    from core.schema import Event
    from online_models import make_model

    model = make_model("embeddings", n_factors=8, window=5, loss=loss, l2=l2, batch_size=10_000, seed=4)
    rng = np.random.default_rng(0)
    for t in range(300):  # queued only: batch_size is never reached
        model.learn_one(Event(user_id=f"u{rng.integers(20)}", item_id=f"i{rng.integers(50)}", type="click", ts=t))
    users = rng.integers(0, 20, 40)
    items = rng.integers(0, 50, 40)
    hists = rng.integers(-1, 50, (40, 5))
    hists[:, 3:] = -1  # padded histories
    hists[0] = -1  # no history at all
    weights = rng.choice([1.0, 2.0, 5.0], 40).astype(np.float32)
    negatives = np.concatenate([items[:3], rng.integers(0, 50, 13)])  # some negatives are positives
    neg_probs = rng.uniform(0.01, 0.1, 16)
    reference, before = copy.deepcopy(model), model._item_out.clone()
    model._gradient_step(users, items, hists, weights, negatives, neg_probs)
    _autograd_step(reference, users, items, hists, weights, negatives, neg_probs)
    assert not torch.equal(model._item_out, before)
    for mine, theirs in [(model._user_vecs, reference._user_vecs), (model._item_in, reference._item_in),
                         (model._item_out, reference._item_out), (model._item_bias, reference._item_bias)]:
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    for name in model._acc:
        assert torch.allclose(model._acc[name], reference._acc[name], rtol=1e-4, atol=1e-9)


def _rerank_one_by_one(model, user_id: str, candidates: list, k: int) -> list:
    """purchase-rerank's re-ranking of one user, each candidate's features from ``_features``."""
    from online_models.purchase_rerank import _FEATURES

    ids = [item for item, _ in candidates]
    base = np.array([score for _, score in candidates])
    span = base.max() - base.min()
    relevance = (base - base.min()) / span if span > 0 else np.ones(len(base))
    weights = np.array([model._clf._weights.get(f, 0.0) for f in _FEATURES])
    touched = model._touches.get(user_id, {})
    features = [model._features(user_id, i, touched.get(i, (0.0, 0.0))[1], None) for i in ids]
    x = np.array([[feats[f] for f in _FEATURES] for feats in features])
    bought = 1.0 / (1.0 + np.exp(-(x @ weights + model._clf.intercept)))
    scores = (1 - model.purchase_weight) * relevance + model.purchase_weight * bought
    order = np.lexsort((np.arange(len(ids)), -scores))[:k]
    return [(ids[j], float(scores[j])) for j in order]


@pytest.mark.parametrize("with_exclude", [False, True])
def test_purchase_rerank_batch_equals_one_by_one(with_exclude: bool) -> None:
    from bench.models_speed import synthetic_stream
    from online_models import make_model

    events = synthetic_stream(6000, n_items=300, n_users=80, seed=7)
    model = make_model("purchase-rerank", min_purchases=5, n_candidates=30)
    model.learn_many(events)
    assert model._purchases >= 5
    users = sorted({e.user_id for e in events})[:40] + ["never-seen"]
    seen: dict[str, set[str]] = {}
    for e in events:
        seen.setdefault(e.user_id, set()).add(e.item_id)
    exclude = seen if with_exclude else None
    batch = model.recommend_many(users, 10, exclude)
    for user in users:
        candidates = model._base.recommend(user, 30, (exclude or {}).get(user))
        expected = _rerank_one_by_one(model, user, candidates, 10)
        got = batch[user]
        assert [i for i, _ in got] == [i for i, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-12)
        assert model.recommend(user, 10, (exclude or {}).get(user)) == got


@pytest.mark.parametrize("n_users", [1, 5, 70, 300])
@pytest.mark.parametrize("k", [10, 100])
def test_top_k_by_product_ranks_by_the_scores(n_users: int, k: int) -> None:
    """Every path (one user, a few, many with the bias folded into the product, several
    chunks) gives each user the k best non-excluded items of ``<rep, item> + bias``."""
    import online_models.embeddings_ranking as emb
    from online_models._arrays import IdIndex

    rng = np.random.default_rng(n_users + k)
    n, d = 30_011, 8  # past the grouped top-k's threshold, with a short last group
    items = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(scale=0.1, size=n).astype(np.float32))
    reps = rng.normal(size=(n_users, d)).astype(np.float32)
    index = IdIndex()
    for row in range(n):
        index.add(f"i{row}")
    users = [f"u{j}" for j in range(n_users)]
    exclude = {u: {f"i{r}" for r in rng.integers(0, n, 50)} | {"unknown"} for u in users[::2]}
    by_user = dict(zip(users, reps))
    old_cells = emb._CHUNK_CELLS
    emb._CHUNK_CELLS = 50 * n  # several chunks of 50 users, the last one short
    try:
        got = emb.top_k_by_product(items, bias, lambda chunk: np.stack([by_user[u] for u in chunk]), index,
                                   users, k, exclude)
    finally:
        emb._CHUNK_CELLS = old_cells
    exact = reps.astype(np.float64) @ items.numpy().T.astype(np.float64) + bias.numpy()
    for j, (user, (rows, vals)) in enumerate(zip(users, got)):
        banned = {int(i[1:]) for i in exclude.get(user, ()) if i != "unknown"}
        assert len(rows) == k and not banned & set(rows)
        assert vals == sorted(vals, reverse=True)
        assert vals == pytest.approx(exact[j, rows].tolist(), rel=1e-5, abs=1e-5)
        others = np.delete(exact[j], list(banned | set(rows)))
        assert others.max() <= vals[-1] + 1e-5


def _fuse_reference(blend, lists: dict, k: int) -> list:
    """Blend's fusion written plainly: sum of scaled scores, ties to the best position, then first seen."""
    fused: dict[str, float] = {}
    order: dict[str, int] = {}
    for name, ranking in lists.items():
        weight = blend._weight(name)
        if not ranking or weight == 0:
            continue
        if blend.rank_offset is not None:
            scaled = [weight * (blend.rank_offset + 1) / (blend.rank_offset + 1 + pos) for pos in range(len(ranking))]
        else:
            high, low = ranking[0][1], ranking[-1][1]
            span = high - low
            scaled = [weight if span <= 0 else (score - low) * (weight / span) for _, score in ranking]
        for pos, ((item, _), value) in enumerate(zip(ranking, scaled)):
            fused[item] = fused.get(item, 0.0) + value
            if pos < order.get(item, pos + 1):
                order[item] = pos
    best = sorted(fused.items(), key=lambda kv: (-kv[1], order[kv[0]]))[:k]
    return [(item, float(score)) for item, score in best]


def _random_lists(rng, names, repeat: bool) -> dict[str, list[tuple[str, float]]]:
    """A ranked list per part name over 40 items: empty to 30 long, scores with ties, and with
    ``repeat`` the last item of each list a repeat of its first."""
    lists = {}
    for name in names:
        size = rng.choice([0, 1, 5, 30])
        items = rng.sample([f"i{j}" for j in range(40)], size)
        if size and repeat:
            items[-1] = items[0]  # a repeated item
        scores = sorted((rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in items), reverse=True)
        lists[name] = list(zip(items, scores))
    return lists


@pytest.mark.parametrize("rank_offset", [None, 60.0])
def test_blend_fusion_matches_its_definition(rank_offset) -> None:
    import random

    from online_models.blend import Blend

    rng = random.Random(3)
    blend = Blend(models={"cooc": {}, "trending": {}, "embeddings": {}},
                  weights={"cooc": 1.0, "trending": 0.0, "embeddings": 0.5}, rank_offset=rank_offset)
    for trial in range(300):
        lists = _random_lists(rng, ("cooc", "trending", "embeddings"), repeat=trial % 7 == 0)
        for k in (0, 1, 10, 100):
            assert blend._fuse(lists, k) == _fuse_reference(blend, lists, k)


def _as_arrays(lists: dict, names, index, width: int):
    from online_models._arrays import RankedRows

    return {name: RankedRows.of_rankings([lists[name]], index, width) for name in names}


@pytest.mark.parametrize("rank_offset", [None, 60.0])
def test_fuse_top_k_equals_blends_dict_fusion(rank_offset) -> None:
    """The array fusion (several users at once, one shared row space) gives, for every
    user, the list the dict fusion gives, ties included."""
    import random

    from online_models._arrays import IdIndex
    from online_models.blend import Blend
    from online_models.fusion import fuse_top_k

    rng = random.Random(5)
    names = ("cooc", "trending", "embeddings", "sequence")
    blend = Blend(models={"cooc": {}, "trending": {}, "embeddings": {}},
                  weights={"cooc": 1.0, "trending": 0.0, "embeddings": 0.5, "sequence": 0.7}, rank_offset=rank_offset,
                  calibrated=())
    # the same with "sequence" calibrated (its scores fused as weight * score ** 2, not scaled)
    calibrated = Blend(models={"cooc": {}, "trending": {}, "embeddings": {}}, weights=blend.weights,
                       rank_offset=rank_offset, calibrated=("sequence",))
    for trial in range(60):
        index = IdIndex()
        users = []
        for _ in range(rng.choice([1, 3, 12])):
            users.append(_random_lists(rng, names, repeat=trial % 7 == 0))
        width = 30
        for k in (0, 1, 10, 100):
            parts = []
            for name in names:
                arrays = [_as_arrays(u, [name], index, width)[name] for u in users]
                parts.append((np.concatenate([a.rows for a in arrays]), np.concatenate([a.scores for a in arrays]),
                              blend._weight(name)))
            rows, scores = fuse_top_k(parts, k, rank_offset)
            for j, lists in enumerate(users):
                got = [(index.ids[r], s) for r, s in zip(rows[j].tolist(), scores[j].tolist()) if r >= 0]
                assert got == blend._fuse(lists, k) == _fuse_reference(blend, lists, k)
            # each fused item's source: the part explain_items names (blend._parts_of)
            again, _, sources = fuse_top_k(parts, k, rank_offset, with_sources=True)
            assert np.array_equal(again, rows)
            for j, lists in enumerate(users):
                items = [index.ids[r] for r in rows[j].tolist() if r >= 0]
                named = {item: names[s] for item, s in zip(items, sources[j].tolist())}
                assert named == blend._parts_of(lists, items) and (sources[j] >= 0).sum() == len(items)
            parts = [part[:3] + (calibrated._power_of(name),) for part, name in zip(parts, names)]
            rows, scores = fuse_top_k(parts, k, rank_offset)
            for j, lists in enumerate(users):
                got = [(index.ids[r], s) for r, s in zip(rows[j].tolist(), scores[j].tolist()) if r >= 0]
                assert got == calibrated._fuse(lists, k)


def test_fuse_top_k_of_rows_past_int32_keys_is_the_same_fusion() -> None:
    """Row numbers too large for fuse_top_k's int32 keys (int64 ones then): the same lists,
    scores and sources as the same items numbered from 0. Ties never look at the number."""
    from online_models.fusion import fuse_top_k

    rng = np.random.default_rng(8)
    parts = []
    for weight in (1.0, 0.5, 0.25):
        rows = np.stack([rng.permutation(40)[:12] for _ in range(50)])  # items listed by several parts
        rows[::4, 9:] = -1
        scores = np.sort(np.round(rng.random(rows.shape), 1), axis=1)[:, ::-1]
        parts.append((rows, np.where(rows >= 0, scores, -np.inf), weight))
    far = [(np.where(rows >= 0, rows + 2**40, -1), scores, weight) for rows, scores, weight in parts]
    for k in (5, 30):
        near_rows, near_scores, near_sources = fuse_top_k(parts, k, with_sources=True)
        far_rows, far_scores, far_sources = fuse_top_k(far, k, with_sources=True)
        assert np.array_equal(far_rows, np.where(near_rows >= 0, near_rows + 2**40, -1))
        assert np.array_equal(far_scores, near_scores) and np.array_equal(far_sources, near_sources)


def _trained_blend(parts: dict, events, batch: int = 200):
    from online_models.blend import Blend

    model = Blend(models=parts, weights={"cooc": 1.0, "embeddings": 0.5, "trending": 0.3})
    for start in range(0, len(events), batch):
        model.learn_many(events[start : start + batch])
    return model


@pytest.mark.parametrize("with_exclude", [False, True])
def test_blend_recommend_many_equals_recommend(with_exclude: bool) -> None:
    """Batch fusion (parts with ``recommend_rows`` and one without) ranks as ``recommend``:
    the same items in the same order, scores equal up to the float32 rounding of the
    embeddings' batched product."""
    from tests.test_ranking_paths import random_stream, seen_by

    events = random_stream(3000, 90, 500, seed=4)
    model = _trained_blend({"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 16}, "trending": {}}, events)
    users = ["nobody", *sorted({e.user_id for e in events})]
    exclude = seen_by(events) if with_exclude else None
    for k in (1, 10, 100):
        many = model.recommend_many(users, k, exclude)
        assert list(many) == users
        for user in users:
            one = model.recommend(user, k, (exclude or {}).get(user))
            assert_same_ranking(many[user], one)


def test_blend_explain_rows_says_what_explain_items_says() -> None:
    """Each part explains the items it added most to, all users at once: the reasons
    ``explain_items`` gives after the same ranking, for whole lists and for cut ones."""
    import random

    from online_models.capabilities import ExplainsRows
    from tests.test_ranking_paths import random_stream

    events = random_stream(3000, 90, 400, seed=6)
    model = _trained_blend({"cooc": {}, "embeddings": {"n_factors": 8, "batch_size": 16}, "trending": {}}, events)
    assert isinstance(model, ExplainsRows)
    users = ["nobody", *sorted({e.user_id for e in events})]
    rng = random.Random(2)
    ranked = model.recommend_rows(users, 20)
    cut = ranked.rows.copy()
    for j in range(len(users)):  # as the pipeline cuts each list after its top_k-th unseen item
        cut[j, rng.randrange(0, 21):] = -1
    for rows in (ranked.rows, cut):
        got = model.explain_rows(users, rows, ranked.index)
        want = [model.explain_items(user, [ranked.index.ids[r] for r in row if r >= 0])
                for user, row in zip(users, rows.tolist())]
        assert got == want
    parts = {strategy for explained in got for strategy, _ in explained}
    assert {"cooc", "embeddings"} <= parts, parts  # several parts explained
    assert got[0] and all(len(got[j]) == (cut[j] >= 0).sum() for j in range(len(users)))
    # rows that are not a cut of the last ranking: explained one user at a time, alike
    other = np.flip(ranked.rows[:3], axis=1).copy()
    other = np.where(other >= 0, other, -1)
    assert model.explain_rows(users[:3], other, ranked.index) == [
        model.explain_items(user, [ranked.index.ids[r] for r in row if r >= 0]) for user, row in zip(users[:3], other)]


def assert_same_ranking(got: list, expected: list, rel: float = 1e-5) -> None:
    """Same items in the same order with scores equal to ``rel``, except that items whose
    scores are equal to ``rel`` (ties up to float rounding) may come in either order."""
    assert len(got) == len(expected)
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=rel, abs=1e-9)
    g_items, e_items = [i for i, _ in got], [i for i, _ in expected]
    for pos, (a, b) in enumerate(zip(g_items, e_items)):
        if a != b:
            score = expected[pos][1]
            tied = {i for i, s in expected if s == pytest.approx(score, rel=rel, abs=1e-9)}
            assert a in tied or pos == len(got) - 1 or score == pytest.approx(expected[-1][1], rel=rel), \
                (pos, a, b, score)


def test_device_top_k_path_ranks_as_the_cpu_path() -> None:
    """The device path (product and a first top-k in torch, survivors ordered on the CPU),
    run here on the CPU device: the same rows and the same ties as the numpy path."""
    import online_models.embeddings_ranking as emb
    from online_models._arrays import IdIndex

    rng = np.random.default_rng(2)
    n, d = 3000, 4
    items = torch.from_numpy(np.round(rng.normal(size=(n, d)), 1).astype(np.float32))  # many ties
    bias = torch.zeros(n)
    reps = np.round(rng.normal(size=(80, d)), 1).astype(np.float32)
    reps[5] = 0.0  # every item ties for this user: the slack is not enough, the CPU path answers
    index = IdIndex()
    for row in range(n):
        index.add(f"i{row}")
    users = [f"u{j}" for j in range(len(reps))]
    by_user = dict(zip(users, reps))
    exclude = {u: {f"i{r}" for r in rng.integers(0, n, 30)} for u in users[::3]}
    represent = lambda chunk: np.stack([by_user[u] for u in chunk])
    for k in (1, 10, 100):
        want = emb.top_k_rows_by_product(items, bias, represent, index, users, k, exclude)
        got = emb.top_k_rows_by_product(items, bias, represent, index, users, k, exclude, torch.device("cpu"))
        assert np.array_equal(got[0], want[0])
        assert np.allclose(got[1], want[1], rtol=1e-6)


def test_embeddings_candidate_stage_with_every_group_probed_is_exact(monkeypatch) -> None:
    """``set_scoring(candidates_from=...)``: the batch ranking takes candidates from the
    index and scores them exactly; probing every group, the lists are the exact ones."""
    import online_models.embeddings_ranking as emb
    from online_models import make_model
    from online_models.candidates import ItemCandidates
    from tests.test_ranking_paths import random_stream, seen_by

    events = random_stream(3000, 60, 800, seed=9)
    model = make_model("embeddings", n_factors=8, batch_size=16)
    model.learn_many(events)
    users = ["nobody", *sorted({e.user_id for e in events})]
    seen = seen_by(events)
    want = model.recommend_many(users, 20, seen)
    monkeypatch.setitem(emb._SCORING, "candidates_from", 1)
    emb._CANDIDATES[model] = ItemCandidates(n_lists=16, n_probe=16)
    got = model.recommend_many(users, 20, seen)
    for user in users:
        assert [i for i, _ in got[user]] == [i for i, _ in want[user]]
        assert [s for _, s in got[user]] == pytest.approx([s for _, s in want[user]], rel=1e-5, abs=1e-6)


def test_embeddings_on_a_device_score_every_item_even_past_the_candidate_size(monkeypatch) -> None:
    """With a torch device set, a batch is scored exactly on it: the candidate index (a
    CPU stage) is neither built nor asked, whatever ``candidates_from`` says."""
    import online_models.embeddings_ranking as emb
    from online_models import make_model
    from tests.test_ranking_paths import random_stream, seen_by

    events = random_stream(2000, 40, 500, seed=4)
    model = make_model("embeddings", n_factors=8, batch_size=16)
    model.learn_many(events)
    users = sorted({e.user_id for e in events})
    seen = seen_by(events)
    want = model.recommend_many(users, 20, seen)
    monkeypatch.setitem(emb._SCORING, "candidates_from", 1)
    monkeypatch.setitem(emb._SCORING, "device", torch.device("cpu"))  # the device path, run on the CPU
    got = model.recommend_many(users, 20, seen)
    assert model not in emb._CANDIDATES
    for user in users:
        assert [i for i, _ in got[user]] == [i for i, _ in want[user]]
