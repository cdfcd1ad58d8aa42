"""``credits simulate``: read two pricing files, replay recorded usage under both (credits_ledger's pure
``domain/simulate.py``), and render the result as text or as a self-contained HTML page with inline SVG
charts (no library, nothing fetched when the page is viewed)."""

from __future__ import annotations

import html
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from credits_ledger.domain.simulate import CohortResult, PackOffer, PriceBook, UsageRecord


class SimulationInputError(ValueError):
    """A pricing file the simulator cannot read (the message names the file and key)."""


def price_book(path: Path) -> PriceBook:
    """Meters' credits per unit, and packs (credits + bonus) with ``prices = {currency = minor units}``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimulationInputError(f"{path}: {exc}") from exc
    try:
        rates = {name: Decimal(str(m["credits_per_unit"])) for name, m in data.get("meters", {}).items()}
        packs = tuple(
            PackOffer(
                name=name,
                credits=Decimal(str(p["credits"])) + Decimal(str(p.get("bonus_credits", "0"))),
                prices={str(c).lower(): Decimal(str(v)) for c, v in (p.get("prices") or {}).items()},
            )
            for name, p in data.get("packs", {}).items()
        )
    except (KeyError, ArithmeticError, ValueError) as exc:
        raise SimulationInputError(f"{path}: meters need credits_per_unit, packs credits ({exc})") from exc
    return PriceBook(rates, packs)


def records(export: dict[str, Any]) -> list[UsageRecord]:
    return [UsageRecord(a, m, meter, Decimal(q)) for a, m, meter, q in export.get("usage", [])]


def _purchase_text(row: CohortResult) -> str:
    parts = []
    for currency, p in sorted(row.purchase.items()):
        parts.append(f"{p.count} x {p.pack} ({currency} {p.cost})" if p.pack else f"- ({currency})")
    return "; ".join(parts)


def render_text(
    result: dict[str, list[CohortResult]], months: int
) -> list[tuple[list[str], list[list[str]]]]:
    """Tables (headers, rows) for the terminal: one row per cohort and pricing."""
    headers = [
        "cohort",
        "accounts",
        "pricing",
        "credits/month",
        "packs per account and month",
        "revenue/month",
    ]
    rows = []
    for today, proposal in zip(result["today"], result["proposal"], strict=True):
        for label, row in (("today", today), ("proposal", proposal)):
            revenue = ", ".join(f"{c} {v}" for c, v in sorted(row.revenue_per_month.items())) or "-"
            rows.append(
                [
                    row.cohort,
                    str(row.accounts),
                    label,
                    str(row.credits_per_month),
                    _purchase_text(row),
                    revenue,
                ]
            )
    return [(headers, rows)]


def _bars(title: str, series: list[tuple[str, Decimal, Decimal]], unit: str) -> str:
    """A grouped bar chart (today vs proposal per cohort) as inline SVG."""
    peak = max([max(a, b) for _, a, b in series] + [Decimal(1)])
    width, height, group = 480, 180, 480 // max(len(series), 1)
    parts = [
        f'<svg viewBox="0 0 {width} {height + 40}" role="img" aria-label="{html.escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg" style="width:100%;max-width:560px">',
        f'<text x="0" y="14" font-size="13" font-weight="600">{html.escape(title)}</text>',
    ]
    for i, (label, today, proposal) in enumerate(series):
        for j, (value, color) in enumerate(((today, "#868e96"), (proposal, "#3b5bdb"))):
            h = float(value / peak) * (height - 30)
            x = i * group + 20 + j * (group // 3)
            parts.append(
                f'<rect x="{x}" y="{height - h:.1f}" width="{group // 3 - 4}" height="{h:.1f}" fill="{color}">'
                f"<title>{html.escape(label)} {'today' if j == 0 else 'proposal'}: {value} {unit}</title></rect>"
            )
        parts.append(
            f'<text x="{i * group + 20}" y="{height + 16}" font-size="12">{html.escape(label)}</text>'
        )
    parts.append(
        f'<text x="0" y="{height + 34}" font-size="11" fill="#868e96">■ today</text>'
        f'<text x="70" y="{height + 34}" font-size="11" fill="#3b5bdb">■ proposal</text></svg>'
    )
    return "".join(parts)


def render_html(result: dict[str, list[CohortResult]], title: str) -> str:
    currencies = sorted({c for rows in result.values() for r in rows for c in r.revenue_per_month})
    charts = [
        _bars(
            "credits per account and month",
            [
                (t.cohort, t.credits_per_month, p.credits_per_month)
                for t, p in zip(result["today"], result["proposal"], strict=True)
            ],
            "credits",
        )
    ]
    for currency in currencies:
        charts.append(
            _bars(
                f"revenue per month, {currency} (minor units)",
                [
                    (
                        t.cohort,
                        t.revenue_per_month.get(currency, Decimal(0)),
                        p.revenue_per_month.get(currency, Decimal(0)),
                    )
                    for t, p in zip(result["today"], result["proposal"], strict=True)
                ],
                currency,
            )
        )
    ((headers, rows),) = render_text(result, 0)
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2330}}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #e4e7ec;padding:4px 10px;text-align:left}"
        ".charts{display:flex;flex-wrap:wrap;gap:24px}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><div class="charts">{"".join(charts)}</div>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{table}</tbody></table></body></html>\n"
    )
