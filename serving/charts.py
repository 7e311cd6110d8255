"""Small SVG charts drawn by the server: the dashboard needs no JavaScript chart library.

>>> svg = line_chart([("applied", [0.0, 2.0, 1.0])], ["12:00", "12:01", "12:02"], unit="/s")
>>> svg.startswith("<svg") and "applied" in svg and "polyline" in svg
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")
WIDTH, HEIGHT = 520, 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 46, 10, 12, 22


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def line_chart(series: Sequence[tuple[str, Sequence[float | None]]], labels: Sequence[str], *, unit: str = "",
               y_max: float | None = None, title: str = "") -> str:
    """Lines over time: ``series`` is ``(name, values)`` per line, ``labels`` name the x positions
    (a ``None`` value is a gap). A legend below names each line with its last value."""
    n = len(labels)
    values = [v for _, vs in series for v in vs if v is not None]
    top = y_max if y_max is not None else _nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(i: int) -> float:
        return _LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - min(v, top) / top)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">']
    for fraction in (0, 0.5, 1):
        gy = _TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" class="axis" text-anchor="end">'
                     f'{_number(top * fraction)}{escape(unit) if fraction else ""}</text>')
    for i in sorted({0, n // 2, n - 1} if n else set()):
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - _BOTTOM + 14}" class="axis" text-anchor="{anchor}">'
                     f'{escape(labels[i])}</text>')
    legend = []
    for k, (name, vs) in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        runs, run = [], []
        for i, v in enumerate(vs):
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(i):.1f},{y(v):.1f}")
        if run:
            runs.append(run)
        for points in runs:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            else:
                parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        last = next((v for v in reversed(vs) if v is not None), None)
        text = f"{name} {_number(last)}{unit}" if last is not None else f"{name} –"
        legend.append(f'<span><i style="background:{colour}"></i>{escape(text)}</span>')
    parts.append(f'</svg><div class="chart-legend">{"".join(legend)}</div>')
    return "".join(parts)


def bars(rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 240) -> str:
    """Horizontal bars, one per ``(label, value)``, scaled to the largest."""
    top = max((v for _, v in rows), default=0.0) or 1.0
    height = 18 * len(rows) + 4
    parts = [f'<svg class="bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for i, (label, value) in enumerate(rows):
        w = (width - 120) * value / top
        parts.append(f'<text x="0" y="{18 * i + 13}" class="legend">{escape(label[:18])}</text>'
                     f'<rect x="80" y="{18 * i + 3}" width="{w:.1f}" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{84 + w:.1f}" y="{18 * i + 13}" class="legend">{_number(value)}{escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)
