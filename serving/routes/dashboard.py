"""``GET /dashboard``: the operator's view in the browser, drawn by the server.

The page is HTML with inline SVG charts (``serving.charts``) and a little plain JavaScript
(``serving/static/dashboard.js``, shipped in the package: no build step) that refreshes
the panels every few seconds and loads the user and item panels on demand. The user panel
shows a user's events and list: it needs the read key (``X-API-Key``) like every
user-specific read.
"""

from __future__ import annotations

import time
from html import escape
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse, HTMLResponse
from markdown_it import MarkdownIt

from core.errors import StoreUnavailable
from core.schema import MAX_ID_CHARS
from serving import dashboard as data
from serving.charts import bars, line_chart
from serving.deps import ReadAllowed, SettingsDep, StoreDep
from serving.routes.recommendations import ID_PATTERN

router = APIRouter(tags=["dashboard"])
Hours = Annotated[int, Query(description="hours shown: 1 (per minute) or 24 (per 15 minutes)")]
AnyId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
_STATIC = resources.files("serving") / "static"
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_HTML = {"content": {"text/html": {}}}


def _static(name: str) -> str:
    return (_STATIC / name).read_text()


def _hours(hours: int) -> int:
    if hours not in data.WINDOWS_H:
        raise HTTPException(status_code=422, detail=f"hours must be one of {sorted(data.WINDOWS_H)}")
    return hours


def _unavailable(exc: StoreUnavailable) -> HTTPException:
    return HTTPException(status_code=503, detail=f"the dashboard's store is unavailable: {exc}")


def _num(value: float | None, digits: int = 3, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value):,}{unit}"
    return f"{value:.{digits}g}{unit}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    age = max(now - ts, 0)
    return f"{age:.0f} s ago" if age < 120 else f"{age / 60:.0f} min ago" if age < 7200 else f"{age / 3600:.1f} h ago"


def _stat(label: str, value: str, stat_id: str, hint: str = "") -> str:
    title = f' title="{escape(hint)}"' if hint else ""
    return (f'<div class="stat"{title}><div class="value" id="{stat_id}">{escape(value)}</div>'
            f'<div class="label">{escape(label)}</div></div>')


def _item_link(item_id: str, title: str = "") -> str:
    shown = escape(title) + f' <span class="id">{escape(item_id)}</span>' if title else escape(item_id)
    return f'<a href="#" class="item-link" data-item="{escape(item_id, quote=True)}">{shown}</a>'


# -- panels ------------------------------------------------------------------------
def stream_panel(o: data.Overview) -> str:
    s = o.series
    fresh_p50, fresh_p99 = data.freshness(s.recent, 0.5), data.freshness(s.recent, 0.99)
    stats = "".join([
        _stat("events/s consumed", _num(o.rate("consumed")), "rate-consumed", "over the last 5 minutes"),
        _stat("applied/s", _num(o.rate("applied")), "rate-applied", "over the last 5 minutes"),
        _stat("dead-lettered/s", _num(o.rate("dead_lettered")), "rate-dead-lettered"),
        _stat("deduplicated/s", _num(o.rate("deduplicated")), "rate-deduplicated"),
        _stat("consumer lag", _num(o.lag), "lag", "records not yet consumed, summed over live workers"),
        _stat("freshness p50", _seconds(fresh_p50), "fresh-p50", "event produced -> its user's list written"),
        _stat("freshness p99", _seconds(fresh_p99), "fresh-p99"),
        _stat("events applied (total)", _num(o.counters.get("applied", 0)), "total-applied"),
    ])
    rates = line_chart([(name.replace("_", "-"), s.values(name, per_second=True)) for name in data.STREAM_COUNTS],
                       s.labels, unit="/s", title="events per second")
    fresh = line_chart([("p50", [data.freshness(b, 0.5) for b in s.bins]),
                        ("p99", [data.freshness(b, 0.99) for b in s.bins])], s.labels, unit=" s", title="freshness")
    rows = "".join(
        f"<tr><td>{escape(str(w.get('worker', '?')))}</td><td>{escape(str(w.get('model', '')))}</td>"
        f"<td>{escape(', '.join(map(str, w.get('partitions', []))) or '–')}</td>"
        f"<td class='n'>{_num(w.get('users', 0))}</td><td class='n'>{_num(w.get('items', 0))}</td>"
        f"<td class='n'>{_num(w.get('consumer_lag', 0))}</td><td>{_ago(w.get('reported_at'), o.now)}</td>"
        f"<td>{_ago(w.get('last_checkpoint_at'), o.now)}</td></tr>" for w in o.workers)
    workers = (f'<table class="workers"><tr><th>worker</th><th>model</th><th>partitions</th><th class=n>users</th><th class=n>items</th>'
               f'<th class=n>lag</th><th>last batch</th><th>last checkpoint</th></tr>{rows}</table>' if o.workers
               else '<p class="empty">No worker has reported in the last minute.</p>')
    return (f'<section class="card wide" id="stream"><h2>Stream</h2><div class="stats">{stats}</div>'
            f'<div class="charts"><figure>{rates}<figcaption>events per second, per '
            f'{s.bin_s // 60} min</figcaption></figure><figure>{fresh}<figcaption>freshness (produced → list '
            f'written)</figcaption></figure></div>{workers}</section>')


def quality_panel(o: data.Overview) -> str:
    s = o.series
    window_hr = s.window.get("online_hits", 0.0) / s.window["online_evaluated"] if s.window.get("online_evaluated") else None
    strategies = sorted(set(s.prefixed("shown")) | set(s.prefixed("clicks")))
    shown_total = [sum(b.get(f"shown:{x}", 0.0) for x in strategies) for b in s.bins]
    shares = [(x, [b.get(f"shown:{x}", 0.0) / t if t else None for b, t in zip(s.bins, shown_total)])
              for x in strategies]
    stats = "".join([
        _stat(f"online HR@10, last {o.hours} h", _num(window_hr), "hr-window",
              "served events whose item was in the user's list (written before the event)"),
        _stat("online HR@10, since start", _num(o.online_hr), "hr-total"),
        _stat("clicks attributed", _num(int(s.window.get("attributed", 0))), "attributed",
              "events that sent back the recomm_id of the answer that showed the item"),
    ])
    hr = line_chart([("HR@10", s.ratio("online_hits", "online_evaluated"))], s.labels, y_max=None, title="online HR")
    share = (line_chart(shares, s.labels, y_max=1.0, title="share of impressions per strategy") if strategies
             else '<p class="empty">No impressions yet: strategy shares appear once lists are served.</p>')
    rows = "".join(
        f"<tr><td>{escape(x)}</td><td class='n'>{_num(int(s.window.get(f'shown:{x}', 0)))}</td>"
        f"<td class='n'>{_num(int(s.window.get(f'clicks:{x}', 0)))}</td>"
        f"<td class='n'>{_num(s.window.get(f'clicks:{x}', 0) / s.window[f'shown:{x}'] if s.window.get(f'shown:{x}') else None)}</td>"
        f"</tr>" for x in strategies)
    table = (f'<table><tr><th>strategy</th><th class=n>shown</th><th class=n>clicked</th><th class=n>click rate</th></tr>{rows}</table>'
             if strategies else "")
    arms = s.prefixed("pulls")
    bandit = ""
    if arms:
        rewards = line_chart([(a, s.ratio(f"rewards:{a}", f"pulls:{a}")) for a in arms], s.labels, y_max=None,
                             title="bandit reward rate per arm")
        bandit = f"<figure>{rewards}<figcaption>agent: reward per pull, per arm</figcaption></figure>"
    return (f'<section class="card" id="quality"><h2>Quality</h2><div class="stats">{stats}</div>'
            f'<figure>{hr}<figcaption>online HR@10 per {s.bin_s // 60} min</figcaption></figure>'
            f'<figure>{share}<figcaption>share of impressions per strategy</figcaption></figure>{bandit}{table}</section>')


def fairness_panel(o: data.Overview) -> str:
    parts = []
    for label, e, key in (("last hour", o.exposure_hour, "hour"), ("last day", o.exposure_day, "day")):
        stats = "".join([
            _stat(f"coverage, {label}", f"{e.coverage:.1%}" if e.coverage is not None else "–", f"coverage-{key}",
                  f"{e.items_shown:,} of {e.catalogue:,} items shown"),
            _stat(f"Gini, {label}", _num(e.gini), f"gini-{key}", "0: every item shown alike; 1: one item takes all"),
            _stat(f"impressions, {label}", _num(e.impressions), f"impressions-{key}"),
        ])
        parts.append(f'<div class="stats">{stats}</div>')
    top = o.exposure_day.top
    if top:
        rows = "".join(f"<tr><td>{_item_link(i, o.titles.get(i, ''))}</td><td class='n'>{n:,}</td>"
                       f"<td class='n'>{x:g}×</td></tr>" for i, n, x in top)
        parts.append(bars([(o.titles.get(i) or i, n) for i, n, _ in top]))
        parts.append(f'<table id="over-exposed"><tr><th>most over-exposed (day)</th><th class=n>impressions</th>'
                     f'<th class=n>vs a fair share</th></tr>{rows}</table>')
    else:
        parts.append('<p class="empty">No impressions yet.</p>')
    return f'<section class="card" id="fairness"><h2>Fairness</h2>{"".join(parts)}</section>'


def overview_html(o: data.Overview) -> str:
    head = (f'<div class="meta" id="meta">model <b>{escape(o.model or "–")}</b> · {len(o.workers)} worker(s) · '
            f'updated {time.strftime("%H:%M:%S", time.localtime(o.now))}</div>')
    return head + stream_panel(o) + quality_panel(o) + fairness_panel(o)


def user_html(u: data.UserView, now: float) -> str:
    rows = "".join(
        f"<tr{' class=seen' if e['seen'] else ''}><td class='n'>{n}</td><td>{_item_link(e['item_id'], e['title'])}"
        f"{' <span class=tag>seen</span>' if e['seen'] else ''}</td><td class='n'>{e['score']:.4g}</td>"
        f"<td>{escape(e['strategy'] or '–')}</td><td>{escape(e['reason'] or '–')}</td></tr>"
        for n, e in enumerate(u.items, 1))
    events = "".join(
        f"<tr><td>{escape(e['type'])}</td><td>{_item_link(e['item_id'], e['title'])}</td>"
        f"<td>{escape(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['ts'])))}</td></tr>" for e in u.history)
    source = ("their own list" if u.source == "personal" else "the popular list (no list of their own yet)")
    return (f'<div id="user-view" data-user="{escape(u.user_id, quote=True)}">'
            f'<p><b>{escape(u.user_id)}</b> gets {source}, by <b>{escape(u.model or "–")}</b>, written '
            f'{_ago(u.updated_at, now)}. <button class="danger" id="forget" '
            f'data-user="{escape(u.user_id, quote=True)}">Forget this user</button></p>'
            f'<div class="split"><div><h3>Current list <span class="id">as served (items they already '
            f'interacted with left out)</span></h3><table id="user-list"><tr><th class=n>#</th><th>item</th><th class=n>score</th>'
            f'<th>strategy</th><th>reason</th></tr>{rows}</table></div>'
            f'<div><h3>Recent events</h3>'
            + (f'<table id="user-events"><tr><th>type</th><th>item</th><th>time</th></tr>{events}</table>' if events
               else '<p class="empty">No recent events kept for this user.</p>')
            + "</div></div></div>")


def item_html(item: data.ItemView) -> str:
    meta = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(', '.join(map(str, v)) if isinstance(v, list) else str(v))}"
                   f"</td></tr>" for k, v in (item.metadata or {}).items())
    similar = "".join(f"<tr><td>{_item_link(i, t)}</td><td class='n'>{s:.4g}</td></tr>" for i, t, s in item.similar)
    return (f'<div id="item-view"><p><b>{escape(item.item_id)}</b> · shown {item.impressions_hour:,} times in the '
            f'last hour, {item.impressions_day:,} in the last day</p><div class="split"><div><h3>Metadata</h3>'
            + (f"<table>{meta}</table>" if meta else '<p class="empty">No metadata loaded (streamrec items load).</p>')
            + '</div><div><h3>Similar items</h3>'
            + (f'<table id="similar"><tr><th>item</th><th class=n>similarity</th></tr>{similar}</table>' if similar
               else '<p class="empty">None computed yet.</p>')
            + "</div></div></div>")


def backtests_html(reports: list[data.Report]) -> str:
    if not reports:
        return '<p class="empty">No backtest reports found. <code>streamrec backtest ... --report DIR</code> writes one.</p>'
    parts = []
    for n, r in enumerate(reports):
        body = _MARKDOWN.render(r.markdown)
        url = f"/dashboard/backtests/{escape(r.name, quote=True)}/report.png"
        body = body.replace('src="report.png"', f'src="{url}" loading="lazy"')
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))
        parts.append(f'<details{" open" if n == 0 else ""}><summary>{escape(r.name)} <span class="id">{when}'
                     f'</span></summary><div class="report">{body}</div></details>')
    return "".join(parts)


# -- routes ------------------------------------------------------------------------
@router.get("/dashboard", response_class=HTMLResponse, summary="The operator's dashboard (HTML)", responses={200: _HTML})
def dashboard(store: StoreDep, settings: SettingsDep, hours: Hours = 1) -> HTMLResponse:
    hours = _hours(hours)
    try:
        overview = overview_html(data.read_overview(store, hours))
    except StoreUnavailable as exc:
        overview = f'<p class="error">Redis is unavailable: {escape(str(exc))}</p>'
    page = (_static("dashboard.html")
            .replace("{{css}}", _static("dashboard.css"))
            .replace("{{js}}", _static("dashboard.js"))
            .replace("{{hours}}", str(hours))
            .replace("{{overview}}", overview)
            .replace("{{backtests}}", backtests_html(data.find_reports(settings.reports_dir)))
            .replace("{{keyed}}", "true" if settings.read_api_key or settings.api_key else "false"))
    return HTMLResponse(page)


@router.get("/dashboard/panels", response_class=HTMLResponse, summary="The dashboard's stream, quality and "
            "fairness panels (an HTML fragment)", responses={200: _HTML, 503: {"description": "store unavailable"}})
def panels(store: StoreDep, hours: Hours = 1) -> HTMLResponse:
    hours = _hours(hours)
    try:
        return HTMLResponse(overview_html(data.read_overview(store, hours)))
    except StoreUnavailable as exc:
        raise _unavailable(exc) from exc


@router.get("/dashboard/users/{user_id}", response_class=HTMLResponse, dependencies=[ReadAllowed],
            summary="A user's recent events and list, with reasons (an HTML fragment; needs the read key)",
            responses={200: _HTML, 401: {"description": "no or wrong X-API-Key"}, 503: {"description": "store unavailable"}})
def user_panel(user_id: AnyId, store: StoreDep) -> HTMLResponse:
    try:
        return HTMLResponse(user_html(data.read_user(store, user_id), time.time()))
    except StoreUnavailable as exc:
        raise _unavailable(exc) from exc


@router.get("/dashboard/items/{item_id}", response_class=HTMLResponse,
            summary="An item's metadata and similar items (an HTML fragment)",
            responses={200: _HTML, 404: {"description": "nothing known of the item"}, 503: {"description": "store unavailable"}})
def item_panel(item_id: AnyId, store: StoreDep) -> HTMLResponse:
    try:
        item = data.read_item(store, item_id)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from exc
    if item is None:
        raise HTTPException(status_code=404, detail=f"nothing is known of item {item_id!r} yet")
    return HTMLResponse(item_html(item))


@router.get("/dashboard/backtests/{name:path}/report.png", response_class=FileResponse, include_in_schema=False)
def report_png(name: str, settings: SettingsDep) -> FileResponse:
    folder = data.report_folder(settings.reports_dir, name)
    if folder is None or not (folder / "report.png").is_file():
        raise HTTPException(status_code=404, detail=f"no report.png for a report named {name!r}")
    return FileResponse(folder / "report.png", media_type="image/png")
