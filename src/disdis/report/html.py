"""One self-contained HTML page for runs and comparisons (``disdis report``): what was run, on which
data, under which protocol (and whether it is reduced), the metrics, and every figure, embedded.

A source is a run folder or a comparison folder (one with ``compare.json``). For a comparison the
page opens with its table (mean ± std over seeds, minutes, kimg) and then shows the first run of
each method; for several runs, a side-by-side table comes first. The figures drawn from files
(share heat map, DCI importance, training curves) are made on the way; the figures that need the
model (traversals, interchange, attention maps) are shown when ``disdis figures`` made them.
No script, no external file: the page opens anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Sequence

from disdis.errors import DisdisError
from disdis.report.markdown import unmixing_summary
from disdis.rundir import RunDir

CAPTIONS = {
    "shares": "What each unit carries: the share of each factor's variance it explains (eta^2, from the evaluation).",
    "importance": "DCI's importance matrix: how much each code is used to predict each factor.",
    "factor_shares": "When each factor was captured: each factor's best unit share during training.",
    "curves": "Training loss and speed against training images.",
    "traversals": "Traversals: each row moves one unit from its 2% to its 98% quantile, the others fixed.",
    "anchors": "Each unit's token set to its DyGA anchors' means, the others fixed.",
    "interchange": "Interchange: each row takes one unit of the source image into every target.",
    "attention": "Where each unit's token is attended: cross-attention weights over the images.",
    "reconstructions": "Images and their reconstructions.",
    "samples": "Generated samples.",
}
HEADLINE = (("factor_vae", "eval_accuracy", "FactorVAE"), ("dci", "disentanglement", "DCI disentanglement"),
            ("dci", "completeness", "DCI completeness"), ("mig", "discrete_mig", "MIG"), ("tad", "tad", "TAD"),
            ("fid", "fid", "FID"))
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2430;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; min-height: 100vh; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 21px; margin-top: 40px; border-bottom: 2px solid #e3e6ea;
     padding-bottom: 4px; } h3 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #d8dce1; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { font-size: 13px; color: #4a5360; margin-top: 4px; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 6px 12px; font-size: 14px; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; font-size: 12px; max-height: 420px; }
.muted { color: #6a7380; font-size: 13px; }
"""


def write_html_report(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Write the report of ``sources`` (run or comparison folders) to ``out``; returns its path."""
    from disdis.io import write_text_atomic
    if not sources:
        raise DisdisError("report: give at least one run or comparison folder")
    body = []
    runs = []
    for source in sources:
        path = Path(source)
        if (path / "compare.json").is_file():
            body += _comparison(path)
        elif RunDir(path).is_run():
            runs.append(RunDir(path))
        else:
            raise DisdisError(f"report: {path} is neither a run folder (config.yaml) nor a comparison (compare.json)")
    if len(runs) > 1:
        body += ["<h2>Runs side by side</h2>", _runs_table(runs)]
    for run in runs:
        body += _run_section(run, level=2)
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>disdis report</title>", f"<style>{STYLE}</style></head><body><main>",
            "<h1>disdis report</h1>",
            f'<p class="muted">{html.escape(", ".join(map(str, sources)))} — written {time.strftime("%Y-%m-%d %H:%M")}</p>',
            *body, "</main></body></html>"]
    return write_text_atomic(Path(out), "\n".join(page))


def _comparison(folder: Path) -> list[str]:
    summary = json.loads((folder / "compare.json").read_text())
    budget = summary["budget"]
    said = f"{budget['minutes']:g} training minutes" if budget.get("minutes") is not None else f"{budget['kimg']:g} kimg"
    rows = ["<tr><th>method</th><th>preset</th><th>FactorVAE</th><th>DCI disentanglement</th><th>DCI completeness</th>"
            "<th>MIG</th><th>minutes</th><th>kimg</th></tr>"]
    for name, m in summary["methods"].items():
        cells = "".join(f'<td class="num">{m["mean"][k]:.3f} ± {m["std"][k]:.3f}</td>' if k in m["mean"] else "<td>-</td>"
                        for k in ("factor_vae", "dci", "dci_completeness", "mig"))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(Path(m['preset']).name)}</td>{cells}"
                    f'<td class="num">{m["minutes"]:.2f}</td><td class="num">{m["kimg"]:g}</td></tr>')
    out = [f"<h2>Comparison: {html.escape(str(folder))}</h2>",
           f"<p>{summary['scale']} scale, {said} per run, seeds {', '.join(map(str, summary['seeds']))}; "
           "mean ± std over seeds.</p>", "<table>", *rows, "</table>",
           f'<p class="muted">protocol: {html.escape(" ".join(summary["protocol"]))}</p>']
    for name, m in summary["methods"].items():
        out += [f"<h2>{html.escape(name)}</h2>"]
        out += _run_section(RunDir(m["runs"][0]), level=3)
    return out


def _runs_table(runs: list[RunDir]) -> str:
    head = "".join(f"<th>{label}</th>" for *_, label in HEADLINE)
    rows = [f"<tr><th>run</th><th>method</th>{head}</tr>"]
    for run in runs:
        result = _metrics(run)
        cells = "".join(_score_cell(result, metric, score) for metric, score, _ in HEADLINE)
        rows.append(f"<tr><td>{html.escape(run.path.name)}</td><td>{html.escape(_method(run))}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _run_section(run: RunDir, level: int) -> list[str]:
    from disdis.figures.run_figures import FILE_FIGURES, file_figures
    file_figures(run, list(FILE_FIGURES), explicit=False)  # cheap: from metrics.json and the logs
    h = f"h{level}"
    status = run.status()
    result = _metrics(run)
    protocol = result.get("protocol") or {}
    facts = [("method", _method(run)), ("data", _data(run)),
             ("training", f"{status.get('state', 'new')}, step {status.get('step', '-')}"),
             ("evaluated", str((result.get("run") or {}).get("checkpoint", "not yet (disdis evaluate RUN)")))]
    unmixed = unmixing_summary(run.path)
    if unmixed is not None:
        facts.append(("units unmixed first", unmixed))
    out = [f"<{h}>{html.escape(run.path.name)}</{h}>", "<table>",
           *(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in facts), "</table>"]
    if protocol and not protocol.get("reference", True):
        counts = ", ".join(f"{k} {protocol[k]}" for k in ("num_train", "num_test", "num_eval", "num_variance_estimate")
                           if k in protocol)
        out.append(f'<p class="note">Reduced protocol ({html.escape(counts)}): the scores are not comparable '
                   "with published ones.</p>")
    if result.get("metrics"):
        out += ["<table><tr><th>metric</th><th>score</th><th>value</th></tr>",
                *(f'<tr><td>{html.escape(m)}</td><td>{html.escape(k)}</td><td class="num">{v:.4f}</td></tr>'
                  for m, scores in result["metrics"].items() for k, v in scores.items()
                  if isinstance(v, (int, float))), "</table>"]
    out += [_figure(path) for path in _figures(run)]
    out.append(f"<details><summary>config.yaml</summary><pre>{html.escape(run.config.read_text())}</pre></details>")
    return out


def _figures(run: RunDir) -> list[Path]:
    folder = run.path / "figures"
    found = sorted(folder.glob("*.png")) if folder.is_dir() else []
    order = {name: i for i, name in enumerate(CAPTIONS)}
    return sorted(found, key=lambda p: (order.get(p.stem, len(order)), p.stem))


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.stem, path.stem)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _metrics(run: RunDir) -> dict:
    return json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}


def _score_cell(result: dict, metric: str, score: str) -> str:
    value = ((result.get("metrics") or {}).get(metric) or {}).get(score)
    return f'<td class="num">{value:.3f}</td>' if isinstance(value, (int, float)) else "<td>-</td>"


def _method(run: RunDir) -> str:
    from disdis.run_config import read_run_file
    return str((read_run_file(run.config).get("method") or {}).get("name", "disentangled_diffusion"))


def _data(run: RunDir) -> str:
    from disdis.run_config import read_run_file
    data = read_run_file(run.config).get("data") or {}
    return f"{data.get('path', '')} ({data.get('kind') or 'kind from the file'}, {data.get('resolution')} px)"
