"""Self-contained HTML reports (inline SVG, no scripts, no external files): training
curves per epoch, confusion matrices as pictures and class tables."""

from __future__ import annotations

import html
import math
from typing import List, Optional, Sequence, Tuple

from ..errors import count
from ..io.atomic import atomic_path
from .metrics import Accuracy

STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.sw{display:inline-block;width:1em;height:1em;border:1px solid #555;
vertical-align:middle}.figs td{font-size:1.05em}
"""


def _e(text) -> str:
    return html.escape(str(text))


def nice_ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi]."""
    span = max(hi - lo, 1e-12)
    raw = span / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 12))
    return ticks


def line_chart(series: Sequence[Tuple[str, str, Sequence[Optional[float]]]], title: str, y_label: str,
               width: int = 520, height: int = 280, y_range: Optional[Tuple[float, float]] = None) -> str:
    """An SVG line chart: series = [(name, colour, values per epoch)]; legend under the axis."""
    values = [v for _, _, vs in series for v in vs if v is not None and math.isfinite(v)]
    n = max((len(vs) for _, _, vs in series), default=0)
    if not values or n == 0:
        return f"<p>{_e(title)}: no data</p>"
    if y_range is not None:
        ticks = nice_ticks(*y_range)
    else:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ticks = nice_ticks(lo - pad, hi + pad)
    lo, hi = ticks[0], ticks[-1]
    left, right, top, bottom = 55, 15, 28, 62
    pw, ph = width - left - right, height - top - bottom

    def x(i):
        return left + (pw * i / max(n - 1, 1))

    def y(v):
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}">', f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
             f'{_e(title)}</text>']
    for v in ticks:
        parts.append(f'<text x="{left - 5}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10">{v:g}</text>')
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for k in sorted({0, (n - 1) // 2, n - 1}):
        parts.append(f'<text x="{x(k):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{k + 1}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle" font-size="11">epoch</text>')
    parts.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {top + ph / 2})">{_e(y_label)}</text>')
    for li, (name, colour, vs) in enumerate(series):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs) if v is not None and math.isfinite(v))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"><title>{_e(name)}'
                     f'</title></polyline>')
        lx = left + 170 * li
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{lx + 14}" y="{height - 7}" font-size="11">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def matrix_svg(acc: Accuracy, cell: int = 44) -> str:
    """The confusion matrix as a picture: rows = reference, columns = predicted, colour =
    share of the reference class (row-normalised), numbers = pixel counts."""
    names = acc.class_names
    n = len(names)
    label_w = max(60, 7 * max((len(s) for s in names), default=5))
    top = int(label_w * math.sin(math.radians(60))) + 20  # column labels are rotated by 60°
    left = label_w + 20
    size_w = left + n * cell + int(label_w * math.cos(math.radians(60))) + 10
    size_h = top + n * cell + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size_w}" height="{size_h}" role="img" '
             'aria-label="confusion matrix">']
    for j, name in enumerate(names):
        cx = left + j * cell + cell / 2
        parts.append(f'<text x="{cx}" y="{top - 6}" font-size="11" transform="rotate(-60 {cx} {top - 6})">'
                     f'{_e(name)}</text>')
    for i, name in enumerate(names):
        row = acc.matrix[i]
        total = max(int(row.sum()), 1)
        parts.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end" font-size="11">'
                     f'{_e(name)}</text>')
        for j in range(n):
            share = row[j] / total
            # diagonal (correct) in blues, confusions in reds, darker = larger share of the row
            a, b = int(255 - 200 * share), int(255 - 120 * share)
            colour = f"rgb({a},{b},255)" if i == j else f"rgb(255,{a},{a})"
            parts.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="{colour}" stroke="#fff"><title>{_e(name)} → {_e(names[j])}: {int(row[j])}</title>'
                         '</rect>')
            parts.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" '
                         f'text-anchor="middle" font-size="10" fill="{"#fff" if a < 120 else "#000"}">'
                         f'{int(row[j])}</text>')
    parts.append(f'<text x="{left + n * cell / 2}" y="{size_h - 8}" text-anchor="middle" font-size="11">'
                 'rows: reference, columns: predicted</text></svg>')
    return "".join(parts)


def _coverage_and_matching(acc: Accuracy) -> str:
    text = ""
    if acc.n_unclassified:
        text += (f"<p>Coverage {acc.coverage:.4f}: {acc.n_unclassified} reference pixels are unclassified in the "
                 "map; they count as errors (column 'unclassified').</p>")
    if acc.matching:
        text += f"<p>Reference classes matched to the map's classes by {_e(acc.matching)}.</p>"
    return text


def accuracy_section(acc: Accuracy, colours: Optional[dict] = None) -> str:
    rows = []
    for code, name, a, u, s in zip(acc.class_codes, acc.class_names, acc.per_class_accuracy, acc.per_class_iou,
                                   acc.support):
        sw = ""
        if colours and code in colours:
            r, g, b = colours[code]
            sw = f'<span class="sw" style="background:rgb({r},{g},{b})"></span> '
        a_txt = "—" if not math.isfinite(a) else f"{a:.4f}"
        u_txt = "—" if not math.isfinite(u) or s == 0 else f"{u:.4f}"
        rows.append(f'<tr><td>{code}</td><td class="l">{sw}{_e(name)}</td><td>{s}</td><td>{a_txt}</td>'
                    f'<td>{u_txt}</td></tr>')
    return (
        '<table class="figs"><tr><th>OA</th><th>AA</th><th>κ</th><th>mIoU</th><th>pixels</th></tr>'
        f"<tr><td>{acc.oa:.4f}</td><td>{acc.aa:.4f}</td><td>{acc.kappa:.4f}</td><td>{acc.miou:.4f}</td>"
        f"<td>{int(acc.matrix.sum())}</td></tr></table>" + _coverage_and_matching(acc) +
        "<h3>Confusion matrix</h3>" + matrix_svg(acc) +
        '<h3>Per class</h3><table><tr><th>code</th><th class="l">class</th><th>reference pixels</th>'
        "<th>accuracy</th><th>IoU</th></tr>" + "".join(rows) + "</table>"
    )


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{body}</body></html>")


def write_training_report(path: str, header: dict, validation: Optional[Accuracy]) -> None:
    """Training report from a model header (``ModelHeader.to_json()``)."""
    t = header["training"]
    hist: List[dict] = t.get("history", [])
    loss = line_chart([("image-text contrastive loss", "#1f77b4", [h.get("train_loss") for h in hist])],
                      "Training loss per epoch (symmetric contrastive, batch)", "loss")
    val_loss = line_chart([("cross-entropy over class prompts", "#d62728", [h.get("val_loss") for h in hist])],
                          "Validation loss per epoch", "loss")
    acc = line_chart([("training OA", "#1f77b4", [h.get("train_oa") for h in hist]),
                      ("validation OA", "#d62728", [h.get("val_oa") for h in hist])],
                     "Overall accuracy per epoch", "OA", y_range=(0.0, 1.0))
    mods = ", ".join(f"{m} ({count(v['bands'], 'band')})" for m, v in header["modalities"].items())
    summary = (
        "<table>"
        f'<tr><th class="l">modalities</th><td class="l">{_e(mods)}</td></tr>'
        f'<tr><th class="l">samples</th><td class="l">{t["n_samples"]} ({t["n_train"]} training, {t["n_val"]} '
        "validation)</td></tr>"
        f'<tr><th class="l">epochs</th><td class="l">{t["epochs_run"]} run, best {t["best_epoch"]}'
        f'{" (early stop)" if t.get("stopped_early") else ""}</td></tr>'
        f'<tr><th class="l">time</th><td class="l">{t["seconds"]:.1f} s, {t["samples_per_s"]:.0f} samples/s on '
        f'{_e(t["device"])}</td></tr>'
        f'<tr><th class="l">text encoder</th><td class="l">{_e(header["text_encoder"])}</td></tr>'
        f'<tr><th class="l">prompt template</th><td class="l">{_e(header["prompt_template"])}</td></tr>'
        f'<tr><th class="l">patch size</th><td class="l">{header["patch_size"]}</td></tr>'
        f'<tr><th class="l">settings</th><td class="l">batch {t["batch_size"]}, learning rate '
        f'{t["learning_rate"]:g}, patience {t["patience"]}, seed {t["seed"]}</td></tr>'
        + (f'<tr><th class="l">ensemble</th><td class="l">{t["members"]} members (seeds '
           f'{", ".join(map(str, t["member_seeds"]))}); curves: the first member, validation: their mean'
           "</td></tr>" if t.get("members", 1) > 1 else "")
        + "</table>"
    )
    colours = {c["code"]: tuple(c["colour"]) for c in header["classes"]}
    counts = t.get("class_counts", {})
    class_rows = "".join(
        f'<tr><td>{c["code"]}</td><td class="l"><span class="sw" style="background:rgb{tuple(c["colour"])}">'
        f'</span> {_e(c["name"])}</td><td>{counts.get(c["name"], "")}</td></tr>' for c in header["classes"])
    body = (f"<h2>Summary</h2>{summary}<h2>Curves</h2>{loss} {val_loss} {acc}"
            '<h2>Classes</h2><table><tr><th>code</th><th class="l">class</th><th>samples</th></tr>'
            f"{class_rows}</table>")
    if validation is not None:
        body += "<h2>Validation</h2>" + accuracy_section(validation, colours)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(_page("rsvl training report", body))


def write_accuracy_report(path: str, acc: Accuracy, title: str = "rsvl accuracy assessment",
                          colours: Optional[dict] = None, note: str = "") -> None:
    body = (f"<p>{_e(note)}</p>" if note else "") + accuracy_section(acc, colours)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(_page(title, body))


def write_fewshot_report(path: str, result) -> bool:
    """A few-shot head's report (rsvl:train FOUNDATION_MODEL): its validation figures and
    confusion matrix, with the zero-shot OA it started from. False (nothing written) when
    there was no validation split."""
    if result.validation is None:
        return False
    zero = "n/a" if result.validation_oa_zero_shot is None else f"{result.validation_oa_zero_shot:.4f}"
    note = (f"Few-shot head on a pretrained checkpoint: {result.n_train} training and {result.n_val} validation "
            f"pixels; best epoch {result.best_epoch} of {result.epochs_run}; validation OA zero-shot {zero}. "
            "The figures below are the kept head's on the validation pixels.")
    write_accuracy_report(path, result.validation, title="rsvl few-shot training report",
                          colours={c.code: tuple(c.colour) for c in result.classes}, note=note)
    return True
