"""Markdown reports and PNG plots (matplotlib, Agg backend) for the LoCoMo and PrefEval harnesses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Measured on this machine with the same embedder, dev split and metric (issue 4): recall@10 / within 2,000 tokens.
REFERENCE = [
    ("BM25 (tantivy, stopwords + stemming), 3-turn windows", 0.81, 0.84),
    ("MiniLM dense alone", 0.62, 0.69),
    ("weighted score fusion of both", 0.84, 0.87),
    ("mem0 (open source, no LLM, same embedder)", 0.57, 0.77),
]
ROW_ORDER = ("1", "2", "3", "4", "overall", "5")


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rows(mode: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cats = mode["categories"]
    out = []
    for key in ROW_ORDER:
        if key == "overall":
            out.append(("**overall (1-4)**", mode["overall"]))
        elif cats.get(key, {}).get("n"):
            out.append((f"{key} {cats[key]['name']}", cats[key]))
    return out


def _ks(result: dict[str, Any]) -> list[str]:
    return [str(k) for k in result["config"]["ks"]]


def mode_table(result: dict[str, Any], mode: str) -> list[str]:
    """The per-category table of one mode (markdown lines)."""
    ks, budget = _ks(result), result["config"]["budget_tokens"]
    head = [
        "category",
        "n",
        *[f"R@{k}" for k in ks],
        "hit@10",
        "sessR@10",
        "NDCG@10",
        f"R@{budget} tok",
        "results in budget",
        "tokens@10",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, g in _rows(result["modes"][mode]):
        cells = [
            name,
            str(g["n"]),
            *[_f(g["recall@k"].get(k)) for k in ks],
            _f(g["hit@k"].get("10")),
            _f(g["session_recall@k"].get("10")),
            _f(g["ndcg@10"]),
            _f(g["recall_budget"]),
            _f(g["budget_results"], 1),
            _f(g["avg_tokens@k"].get("10"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def locomo_markdown(result: dict[str, Any]) -> str:
    cfg, ks, budget = result["config"], _ks(result), result["config"]["budget_tokens"]
    out = [
        "# LoCoMo retrieval (no LLM)",
        "",
        f"Data `{cfg['data']}`: conversations {', '.join(cfg['conversations'])}; {cfg['sessions']} sessions, "
        f"{cfg['turns']} turns; questions scored per category: "
        + ", ".join(f"{k} {v}" for k, v in cfg["questions"].items())
        + ".",
        f"Windows of {cfg['chunk_turns']} turns (overlap {cfg['chunk_overlap']}), fusion `{cfg['fusion']}`, "
        f"embedder `{cfg['embedder']}`, top_k {cfg['top_k']}, token budget {budget} ({cfg['tokenizer']}).",
        f"Ingest: {result['ingest']['adds']} adds in {result['ingest']['seconds']} s.",
        "",
        "## Summary (categories 1-4)",
        "",
    ]
    head = ["mode", *[f"R@{k}" for k in ks], f"R@{budget} tok", "tokens@10", "NDCG@10", "p50 ms", "p99 ms"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, m in result["modes"].items():
        g, lat = m["overall"], m["latency_ms"]
        out.append(
            "| "
            + " | ".join(
                [
                    mode,
                    *[_f(g["recall@k"].get(k)) for k in ks],
                    _f(g["recall_budget"]),
                    _f(g["avg_tokens@k"].get("10"), 0),
                    _f(g["ndcg@10"]),
                    _f(lat["p50"], 1),
                    _f(lat["p99"], 1),
                ]
            )
            + " |"
        )
    if result.get("targets"):
        out += [
            "",
            "Targets (fast, categories 1-4): "
            + "; ".join(
                f"{name} {t['target']}: {_f(t['value'])} ({'reached' if t['reached'] else 'NOT reached'})"
                for name, t in result["targets"].items()
            )
            + ".",
        ]
    out += [
        "",
        "Reference points (issue 4, same machine, embedder, split and metric): recall@10 / within 2,000 tokens",
        "",
        "| system | R@10 | R@2000 tok |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {r10:.2f} | {rb:.2f} |" for name, r10, rb in REFERENCE]
    for mode, m in result["modes"].items():
        lat = m["latency_ms"]
        steps = ", ".join(f"{k} {v}" for k, v in lat.get("steps_p50_ms", {}).items())
        out += [
            "",
            f"## {mode}",
            "",
            *mode_table(result, mode),
            "",
            f"Search latency over HTTP: p50 {_f(lat['p50'], 1)} ms, p99 {_f(lat['p99'], 1)} ms "
            f"(n={lat['n']}); worker steps p50 (ms): {steps or '-'}. "
            f"Questions whose results all fit in the budget: {m['budget_unfilled']}; searches retried after "
            f"a 5xx: {m.get('search_retries', 0)}.",
        ]
    ev = result["evidence"]
    out += [
        "",
        "## Evidence ids",
        "",
        f"{ev['questions_scored']} of {ev['questions_total']} questions scored; "
        f"{ev['questions_without_evidence']} have no usable evidence id. Normalised: "
        + (", ".join(ev["normalised_ids"]) or "none")
        + ". Dropped (malformed, or not a turn of the "
        "conversation): " + (", ".join(ev["dropped_ids"]) or "none") + ".",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in result["notes"]],
        "",
        "Plots: `recall_by_category.png`, `recall_vs_tokens.png`.",
        "",
    ]
    return "\n".join(out)


def plot_recall_by_category(result: dict[str, Any], path: Path) -> None:
    ks = [int(k) for k in _ks(result)]
    modes = result["modes"]
    panels = [key for key in ROW_ORDER if key == "overall" or next(iter(modes.values()))["categories"][key]["n"]]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, key in zip(flat, panels, strict=False):
        for mode, m in modes.items():
            g = m["overall"] if key == "overall" else m["categories"][key]
            ax.plot(ks, [g["recall@k"][str(k)] or 0.0 for k in ks], marker="o", label=mode)
        name = "" if key == "overall" else next(iter(modes.values()))["categories"][key]["name"]
        ax.set_title(f"overall 1-4 (n={g['n']})" if key == "overall" else f"{key} {name} (n={g['n']})", fontsize=10)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("evidence recall@k")
    flat[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_recall_vs_tokens(result: dict[str, Any], path: Path) -> None:
    ks, budget = _ks(result), result["config"]["budget_tokens"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for mode, m in result["modes"].items():
        g = m["overall"]
        xs = [g["avg_tokens@k"][k] or 0.0 for k in ks]
        ys = [g["recall@k"][k] or 0.0 for k in ks]
        (line,) = ax.plot(xs, ys, marker="o", label=f"{mode} (k = {', '.join(ks)})")
        for x, y, k in zip(xs, ys, ks, strict=True):
            ax.annotate(k, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7, color=line.get_color())
        ax.plot(
            [g["budget_tokens"] or 0.0],
            [g["recall_budget"] or 0.0],
            marker="*",
            markersize=12,
            color=line.get_color(),
            linestyle="none",
        )
    ax.axvline(budget, color="grey", linestyle="--", linewidth=0.8, label=f"{budget}-token budget (* = within it)")
    ax.set_xlabel("average returned context (tokens)")
    ax.set_ylabel("evidence recall (categories 1-4)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_locomo_report(result: dict[str, Any], records: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """report.md, result.json, questions.jsonl (per question and mode) and the two plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / n
        for n in ("report.md", "result.json", "questions.jsonl", "recall_by_category.png", "recall_vs_tokens.png")
    ]
    paths[0].write_text(locomo_markdown(result), encoding="utf-8")
    paths[1].write_text(json.dumps(result, indent=2), encoding="utf-8")
    paths[2].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    plot_recall_by_category(result, paths[3])
    plot_recall_vs_tokens(result, paths[4])
    return paths


# ---------------------------------------------------------------- PrefEval


def prefeval_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    ks = [str(k) for k in cfg["ks"]]
    fillers = [str(f) for f in cfg["fillers"]]
    out = [
        "# PrefEval proxy (no LLM): is the stated preference retrieved?",
        "",
        f"{cfg['topics_sampled']} of {cfg['topics_available']} explicit-preference topic items "
        f"(seed {cfg['seed']}); a fresh user per item and filler count; filler turns are user+assistant pairs "
        "from filtered_inter_turns.json in file order.",
        "",
    ]
    head = ["mode", "fillers", *[f"R@{k}" for k in ks], "mean rank (found)", "p50 ms"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, by_f in result["modes"].items():
        for f in fillers:
            g = by_f[f]
            out.append(
                "| "
                + " | ".join(
                    [mode, f, *[_f(g["recall@k"][k]) for k in ks], _f(g["mean_rank"], 2), _f(g["latency_ms"]["p50"], 1)]
                )
                + " |"
            )
    out += [
        "",
        *[f"- {n}" for n in result["notes"]],
        "",
        "Plot: `prefeval_recall.png`; ranked results per question: `prefeval_questions.jsonl`.",
        "",
    ]
    return "\n".join(out)


def write_prefeval_report(result: dict[str, Any], records: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """prefeval.md, prefeval.json, prefeval_questions.jsonl (ranked results per question) and a plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = out_dir / "prefeval.md", out_dir / "prefeval.json", out_dir / "prefeval_recall.png"
    qs = out_dir / "prefeval_questions.jsonl"
    md.write_text(prefeval_markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result, indent=2), encoding="utf-8")
    qs.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    fillers, ks = result["config"]["fillers"], [str(k) for k in result["config"]["ks"]]
    fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 3.8), sharey=True, squeeze=False)
    xs = list(range(len(fillers)))
    for ax, k in zip(axes[0], ks, strict=True):
        for mode, by_f in result["modes"].items():
            ax.plot(xs, [by_f[str(f)]["recall@k"][k] or 0.0 for f in fillers], marker="o", label=mode)
        ax.set_xticks(xs, [str(f) for f in fillers])
        ax.set_xlabel("filler turns before the question")
        ax.set_title(f"preference recall@{k}", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [md, js, qs, png]
