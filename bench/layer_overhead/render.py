"""The report as a table for the terminal, and as an SVG chart: pure text, no plotting library.

Table: one row per workload, one column per layer; a cell is the median, its % of the
host and the spread over the repeats. Each column's header names its accelerator, so a
TCG column can never pass for a hardware-accelerated one.
Chart: one bar group per workload, one bar per running layer, in % of the host.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from .results import SEED_CLAIMS_TEXT, WORKLOADS, Measurement, Report


def format_value(value: float) -> str:
    """Three significant figures without scientific notation: 0.412, 12.3, 4520."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_cell(report: Report, measurement: Measurement | None, layer_up: bool) -> str:
    if not layer_up:
        return "not up"
    if measurement is None or measurement.skipped:
        return "n/a"
    if not measurement.ok:
        return "failed"
    percent = report.percent(measurement)
    spread = measurement.spread_percent
    # Fixed widths, so the figures line up down a column.
    return "{:>6} {:>5} {:>5}".format(
        format_value(measurement.median),
        f"{percent:.0f}%" if percent is not None else "",
        f"±{spread:.0f}%" if spread is not None else "±-",
    )


def render_table(report: Report) -> str:
    headers = ["workload", "unit"] + [f"{layer.name} [{layer.accelerator}]" for layer in report.layers]
    rows = []
    for workload in WORKLOADS:
        row = [workload.title, workload.unit]
        for layer in report.layers:
            row.append(format_cell(report, report.cell(workload.name, layer.name), layer.up))
        rows.append(row)
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(
        f"cell: median, % of host, ±spread ((max-min)/median) over {report.settings.repeats} "
        f"measurement(s) of {report.settings.seconds:g} s"
    )
    lines.append("HTTP latency: lower is better; its % of host is host latency / layer latency")
    for layer in report.layers:
        if not layer.up:
            lines.append(f"{layer.name}: not up ({layer.reason})")
    for measurement in report.measurements:
        if measurement.error or measurement.skipped:
            why = measurement.error or measurement.skipped
            lines.append(f"{measurement.layer} / {measurement.workload}: {why}")
    lines.append(SEED_CLAIMS_TEXT)
    return "\n".join(lines) + "\n"


# Colour-blind-safe (Okabe-Ito), one per layer in LAYER_NAMES order.
LAYER_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")


def label_lines(title: str) -> list[str]:
    """A workload title in at most two lines, split at its last space before the middle."""
    if len(title) <= 16 or " " not in title:
        return [title]
    cut = title.rfind(" ", 0, len(title) // 2 + 4)
    cut = cut if cut > 0 else title.find(" ")
    return [title[:cut], title[cut + 1 :]]


def render_svg(report: Report) -> str:
    running = [layer for layer in report.layers if layer.up]
    bar, gap, group_gap = 18, 2, 28
    left, top, plot_height = 60, 60, 240
    # Wide enough for a two-line workload label under the group.
    group_width = max(len(running) * (bar + gap) + group_gap, 112)
    width = left + group_width * len(WORKLOADS) + 20
    height = top + plot_height + 90
    percents = [report.percent(m) for m in report.measurements]
    ceiling = max([100.0, *(p for p in percents if p is not None)])
    ceiling = ceiling * 1.1

    def y_of(percent: float) -> float:
        return top + plot_height - percent / ceiling * plot_height

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">'
        f"{escape(f'Layer overhead, stack {report.stack}: % of host (higher is better)')}</text>",
        f'<text x="{left}" y="38" fill="#555">{escape(report.created)}; median of '
        f"{report.settings.repeats} x {report.settings.seconds:g} s; the legend names each layer's "
        "accelerator</text>",
    ]
    for tick in range(0, int(ceiling) + 1, 25):
        y = y_of(tick)
        stroke = "#444" if tick == 100 else "#ddd"
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="{stroke}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    for index, workload in enumerate(WORKLOADS):
        x0 = left + index * group_width + (group_width - len(running) * (bar + gap)) / 2
        for slot, layer in enumerate(running):
            x = x0 + slot * (bar + gap)
            colour = LAYER_COLOURS[slot % len(LAYER_COLOURS)]
            measurement = report.cell(workload.name, layer.name)
            percent = report.percent(measurement) if measurement else None
            if percent is None:
                out.append(f'<text x="{x + bar / 2:.1f}" y="{y_of(0) - 4:.1f}" text-anchor="middle">-</text>')
                continue
            y = y_of(percent)
            tip = f"{layer.name} [{layer.accelerator}] {workload.title}: {percent:.0f}% of host"
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar}" height="{y_of(0) - y:.1f}" '
                f'fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                f'font-size="9">{percent:.0f}</text>'
            )
        label_x = left + index * group_width + group_width / 2
        for row, words in enumerate(label_lines(workload.title)):
            out.append(
                f'<text x="{label_x:.1f}" y="{y_of(0) + 14 + 12 * row:.1f}" text-anchor="middle">'
                f"{escape(words)}</text>"
            )
    legend_y = height - 30
    for slot, layer in enumerate(running):
        x = left + slot * 150
        out.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" '
            f'fill="{LAYER_COLOURS[slot % len(LAYER_COLOURS)]}"/>'
        )
        out.append(
            f'<text x="{x + 16}" y="{legend_y}">{escape(f"{layer.name} [{layer.accelerator}]")}</text>'
        )
    not_up = [layer.name for layer in report.layers if not layer.up]
    if not_up:
        out.append(
            f'<text x="{left}" y="{height - 8}" fill="#555">{escape("not up: " + ", ".join(not_up))}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
