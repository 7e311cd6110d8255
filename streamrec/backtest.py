"""Backtests: replay a historical log through the registered models, test-then-learn, and report.

The models are the very classes the worker runs (from ``online_models.registry``), judged
by ``online_models.evaluation.prequential``. Reports: a table on the terminal, one JSON
object per model (``--json``), and with ``report_dir`` the files ``report.json``,
``report.md`` (the comparison table) and ``report.png`` (HR@k over time in a sliding
window, per model, so drift shows).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import StreamrecError
from online_models import set_torch_threads
from online_models.evaluation import PrequentialResult, next_item, next_item_split, prequential, sliding_rate
from stream.logs import Log, read_log

PROGRESS_MIN_EVENTS = 10_000
PROTOCOLS = ("prequential", "next-item")
PLOT_POINTS = 400


class BacktestError(StreamrecError):
    """A backtest that cannot run: no models, an unknown model, an empty log."""


@dataclass
class Backtest:
    log: Log
    results: list[PrequentialResult]
    settings: dict
    errors: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict:
        events = self.log.events
        return {
            "files": [str(p) for p in self.log.files],
            "format": self.log.format,
            "rows": self.log.rows,
            "events": len(events),
            "users": len({e.user_id for e in events}),
            "items": len({e.item_id for e in events}),
            "bad_rows": self.log.bad,
            "bad_examples": self.log.bad_examples,
            "first_ts": events[0].ts if events else None,
            "last_ts": events[-1].ts if events else None,
        }


def model_names(spec: str | Sequence[str] | None) -> list[str]:
    """Registry names from ``"a,b,c"`` (or a list); ``None`` or ``"all"`` means every registered model."""
    from online_models.registry import MODELS

    if spec is None or spec == "all" or spec == ["all"]:
        names = list(MODELS)
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        names = [n.strip() for n in parts if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise BacktestError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(MODELS)}")
    if not names:
        raise BacktestError("no models to backtest")
    return list(dict.fromkeys(names))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_backtest(
    paths: str | Path | Iterable[str | Path],
    fmt: str,
    *,
    models: str | Sequence[str] | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    warmup: int = 0,
    stride: int = 1,
    limit: int | None = None,
    strict: bool = False,
    progress: bool = True,
    log: Callable[[str], object] = _stderr,
    on_result: Callable[[PrequentialResult], object] | None = None,
    make: Callable[[str], object] | None = None,
    torch_threads: int | None = 1,
    protocol: str = "prequential",
    test_paths: str | Path | Iterable[str | Path] | None = None,
) -> Backtest:
    """Read the log, then judge each model on it in turn (each starts unfitted).

    ``protocol`` is ``"prequential"`` (test-then-learn over the log) or ``"next-item"``
    (learn the log, then judge each click of the ``test_paths`` sessions after their first:
    see ``online_models.evaluation.next_item``; ``warmup`` and ``stride`` do not apply).
    """
    if protocol not in PROTOCOLS:
        raise BacktestError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "next-item" and test_paths is None:
        raise BacktestError("the next-item protocol needs a test log (--test)")
    if protocol == "prequential" and test_paths is not None:
        raise BacktestError("a test log (--test) goes with --protocol next-item")
    if k < 1:
        raise BacktestError("k must be at least 1")
    if stride < 1:
        raise BacktestError("stride must be at least 1")
    if warmup < 0:
        raise BacktestError("warmup must not be negative")
    if make is None:  # the registry's models, by name
        from online_models.registry import make_model as make

        names = model_names(models)
    else:  # a caller's own factory (tests, notebooks): names are whatever it understands
        names = [n.strip() for n in (models.split(",") if isinstance(models, str) else models or []) if n.strip()]
        if not names:
            raise BacktestError("no models to backtest")

    if torch_threads is not None:
        set_torch_threads(torch_threads)
    t0 = time.perf_counter()
    data = read_log(paths, fmt, strict=strict, limit=limit)
    log(f"read {data.summary()} in {time.perf_counter() - t0:.1f}s")
    if not data.events:
        raise BacktestError("the log has no valid events")
    settings = {"k": k, "exclude_seen": exclude_seen, "warmup": warmup, "stride": stride, "limit": limit,
                "models": names, "protocol": protocol}
    split = None
    if protocol == "next-item":
        test = read_log(test_paths, fmt, strict=strict)
        split = next_item_split(data.events, test.events)
        settings.update(test_files=[str(p) for p in test.files], predictions=split.predictions,
                        dropped_unknown_items=split.dropped_unknown_items,
                        dropped_short_sessions=split.dropped_short_sessions)
        log(f"test: {test.summary()}; {split.dropped_unknown_items:,} clicks of items not in train and "
            f"{split.dropped_short_sessions:,} sessions under 2 clicks dropped; {split.predictions:,} predictions")
    backtest = Backtest(log=data, results=[], settings=settings)
    total = len(data.events) + (len(split.test) if split is not None else 0)
    show_bar = progress and total >= PROGRESS_MIN_EVENTS
    for name in names:
        model = make(name)
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"{name:>16}", unit="ev", unit_scale=True,
                       file=sys.stderr, mininterval=1.0, leave=True, dynamic_ncols=True)
        try:
            if split is not None:
                result = next_item(model, split, k, exclude_seen=exclude_seen,
                                   progress=bar.update if bar is not None else None)
            else:
                result = prequential(model, data.events, k, exclude_seen=exclude_seen, warmup=warmup, stride=stride,
                                     progress=bar.update if bar is not None else None)
        except Exception as exc:  # one broken model must not sink the comparison
            backtest.errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: failed: {backtest.errors[name]}")
            continue
        finally:
            if bar is not None:
                bar.close()
        result.model = name
        backtest.results.append(result)
        log(f"{name}: HR@{k} {result.hr:.4f}  MRR@{k} {result.mrr:.4f}  NDCG@{k} {result.ndcg:.4f}  "
            f"{result.evaluated:,} evaluated  {result.events_per_s:,.0f} events/s")
        if on_result is not None:
            on_result(result)
    return backtest


# -- reports ---------------------------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table_rows(results: Sequence[PrequentialResult]) -> tuple[list[str], list[list[str]]]:
    k = results[0].k if results else 10
    header = ["model", "events", "evaluated", f"HR@{k}", f"NDCG@{k}", "MRR", f"P@{k}", f"R@{k}", f"F1@{k}",
              "coverage", "gini", "MAE", "RMSE", "events/s"]
    rows = [
        [r.model, _fmt(r.events), _fmt(r.evaluated), _fmt(r.hr), _fmt(r.ndcg), _fmt(r.mrr), _fmt(r.precision),
         _fmt(r.recall), _fmt(r.f1), _fmt(r.coverage), _fmt(r.gini), _fmt(r.mae), _fmt(r.rmse),
         f"{r.events_per_s:,.0f}"]
        for r in results
    ]
    return header, rows


def text_table(results: Sequence[PrequentialResult]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: Sequence[PrequentialResult]) -> str:
    header, rows = table_rows(results)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def hr_over_time(result: PrequentialResult, window: int, points: int = PLOT_POINTS) -> dict:
    """HR@k in a trailing window of ``window`` evaluated events, thinned to about ``points`` points."""
    rate = sliding_rate(result.hits, window)
    ts = np.frombuffer(result.hit_ts, dtype=np.float64) if len(result.hit_ts) else np.zeros(0)
    if len(rate) > points:
        idx = np.linspace(0, len(rate) - 1, points).round().astype(np.int64)
        rate, ts = rate[idx], ts[idx]
    return {"window": window, "ts": ts.tolist(), "hr": [round(float(x), 6) for x in rate]}


def _window(results: Sequence[PrequentialResult]) -> int:
    evaluated = max((r.evaluated for r in results), default=0)
    return max(100, min(5000, evaluated // 40))


_PROTOCOL_TEXT = {
    "prequential": "prequential test-then-learn, timestamp order (stable sort)",
    "next-item": "next-item: learn train, then each test session's clicks after its first are ranked "
                 "from its prefix and learned after (streaming), timestamp order",
}


def report_dict(backtest: Backtest) -> dict:
    window = _window(backtest.results)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": _PROTOCOL_TEXT[backtest.settings.get("protocol", "prequential")],
        "dataset": backtest.meta(),
        "settings": backtest.settings,
        "models": [{**_finite(r.as_dict()), "hr_over_time": hr_over_time(r, window)} for r in backtest.results],
        "errors": backtest.errors,
    }


def plot_hr_over_time(results: Sequence[PrequentialResult], path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    window = _window(results)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for r in results:
        if not r.evaluated:
            continue
        series = hr_over_time(r, window, points=2000)
        when = [datetime.fromtimestamp(t, tz=timezone.utc) for t in series["ts"]]
        ax.plot(when, series["hr"], label=f"{r.model} (HR@{r.k} {r.hr:.3f})", linewidth=1.2)
    ax.set_ylabel(f"HR@{results[0].k if results else 10}, last {window:,} evaluated events")
    ax.set_xlabel("event time (UTC)")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Prequential HR over time")
    if results:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(backtest: Backtest, directory: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "png": directory / "report.png"}
    report = report_dict(backtest)
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    meta = report["dataset"]
    s = backtest.settings
    names = ", ".join(Path(f).name for f in meta["files"])
    lines = [
        f"# Backtest: {names}",
        "",
        (f"Next-item protocol on {s.get('predictions', 0):,} test clicks after a session's first, trained on "
         if s.get("protocol") == "next-item" else "Prequential (test-then-learn) in timestamp order: ")
        + f"{meta['events']:,} events, {meta['users']:,} users, "
        f"{meta['items']:,} items ({meta['format']}); k={s['k']}, exclude seen={s['exclude_seen']}, "
        f"warmup={s['warmup']}, stride={s['stride']}" + (f", limit={s['limit']:,}" if s["limit"] else "") + ".",
        "",
        markdown_table(backtest.results),
        "",
        "HR/NDCG/MRR/P/R/F1 over evaluated events (a user's 2nd event onwards); coverage: share of the "
        "catalogue ever recommended; gini: inequality of exposure across catalogue items; MAE/RMSE: "
        "rating predicted before it is learnt (models with `predict_one`).",
    ]
    if meta["bad_rows"]:
        lines += ["", f"{meta['bad_rows']:,} bad rows skipped, e.g.:", ""]
        lines += [f"- `{x}`" for x in meta["bad_examples"]]
    if backtest.errors:
        lines += ["", "Models that failed:", ""] + [f"- {n}: {e}" for n, e in backtest.errors.items()]
    lines += ["", "![HR over time](report.png)", ""]
    paths["md"].write_text("\n".join(lines))
    plot_hr_over_time(backtest.results, paths["png"], title=f"Prequential HR@{s['k']} over time: {names}")
    return paths


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(data: dict) -> dict:
    """Non-finite floats (a model that predicts NaN) become ``None``, which JSON can hold."""
    return {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in data.items()}


def result_json(result: PrequentialResult) -> str:
    """One model's summary as a single JSON line (non-finite numbers become null)."""
    return json.dumps(_finite(result.as_dict()), default=_json_default)
