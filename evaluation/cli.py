"""``memos-pipeline eval``: the offline retrieval-quality harnesses (LoCoMo, PrefEval proxy); no LLM needed.

Registered in the main CLI as ``main.add_command(eval_group)``; standalone: ``python -m evaluation.cli locomo ...``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cli.harness import unwind_on_sigterm
from evaluation import locomo as locomo_mod
from evaluation import prefeval as prefeval_mod


def _ints(value: str, name: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated integers expected", param_hint=name) from None
    if not out or any(v < 0 for v in out):
        raise click.BadParameter(f"{value!r}: at least one non-negative integer expected", param_hint=name)
    return out


def _modes(value: str) -> list[str]:
    out = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in out if m not in locomo_mod.MODES]
    if unknown or not out:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(locomo_mod.MODES)}", param_hint="--modes")
    return out


def _ks(value: str) -> list[int]:
    ks = sorted(set(_ints(value, "--k")))
    if ks[0] < 1 or ks[-1] > 100:
        raise click.BadParameter("k must be within 1..100 (the API's top_k limit)", param_hint="--k")
    return ks


_DATA = click.Path(exists=True, path_type=Path)


def _emit(result: dict[str, Any], records: Any, report: Path | None, as_json: bool, write: Any, markdown: Any) -> None:
    """The report files (if asked for), the markdown summary (unless --json), then the JSON result."""
    if report is not None:
        result["report"] = [str(p) for p in write(result, records, report)]
    if not as_json:
        click.echo(markdown(result))
    click.echo(json.dumps(result, indent=2))


@click.group("eval", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def eval_group() -> None:
    """Offline retrieval quality on real data, through the real pipeline (own stack, no LLM)."""


@eval_group.command("locomo")
@click.option("--data", required=True, type=_DATA, help="A LoCoMo json (e.g. locomo10.json or a split of it).")
@click.option("--k", "k", default="1,5,10,20", show_default=True, help="Cut-offs for recall@k, hit@k.")
@click.option(
    "--modes",
    default="bm25,dense,fast",
    show_default=True,
    help=f"Search modes side by side ({', '.join(locomo_mod.MODES)}).",
)
@click.option("--conversations", type=click.IntRange(min=1), default=None, help="Only the first N conversations.")
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=locomo_mod.BUDGET_TOKENS,
    show_default=True,
    help="Context budget in tokens for 'recall within budget'.",
)
@click.option(
    "--top-k",
    type=click.IntRange(1, 100),
    default=None,
    help=f"Results per search [default: max(max k, {locomo_mod.BUDGET_TOP_K}), to fill the budget].",
)
@click.option(
    "--date-format",
    type=click.Choice(locomo_mod.DATE_FORMATS),
    default="locomo",
    show_default=True,
    help="Session dates as sent: the dataset's own strings, ISO 8601 or epoch seconds (both taken as UTC).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result (progress bars still on stderr).")
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.md, result.json, questions.jsonl and PNG plots to this directory.",
)
def locomo_cmd(
    data: Path,
    k: str,
    modes: str,
    conversations: int | None,
    budget: int,
    top_k: int | None,
    date_format: str,
    as_json: bool,
    report: Path | None,
) -> None:
    """Ingest LoCoMo conversations (one add per session), search every question per mode, score the evidence:
    recall@k, hit@k, session recall@k, NDCG@10, recall within a token budget, context size, latency."""
    from evaluation.report import locomo_markdown, write_locomo_report
    from memos_pipeline.config import get_settings

    ks, mode_list = _ks(k), _modes(modes)
    unwind_on_sigterm()
    result, records = locomo_mod.run_locomo(
        get_settings(),
        data,
        ks=ks,
        modes=mode_list,
        conversations=conversations,
        budget=budget,
        top_k=top_k,
        date_format=date_format,
    )
    _emit(result, records, report, as_json, write_locomo_report, locomo_markdown)


@eval_group.command("prefeval")
@click.option("--data", required=True, type=_DATA, help="The PrefEval benchmark_dataset directory.")
@click.option("--k", "k", default="5", show_default=True, help="Cut-offs for recall@k.")
@click.option("--fillers", default="0,10,300", show_default=True, help="Filler turns between preference and question.")
@click.option(
    "--topics",
    type=click.IntRange(min=1),
    default=prefeval_mod.DEFAULT_TOPICS,
    show_default=True,
    help="Topic items sampled (round robin over the topic files).",
)
@click.option("--modes", default="bm25,dense,fast", show_default=True, help="Search modes side by side.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write prefeval.md, prefeval.json and a PNG plot to this directory.",
)
def prefeval_cmd(
    data: Path, k: str, fillers: str, topics: int, modes: str, seed: int, as_json: bool, report: Path | None
) -> None:
    """LLM-free PrefEval proxy: preference, N filler turns, question; recall@k of the preference turn."""
    from evaluation.report import prefeval_markdown, write_prefeval_report
    from memos_pipeline.config import get_settings

    fill: Sequence[int] = sorted(set(_ints(fillers, "--fillers")))
    ks, mode_list = _ks(k), _modes(modes)
    unwind_on_sigterm()
    result, records = prefeval_mod.run_prefeval(
        get_settings(), data, ks=ks, fillers=fill, topics=topics, modes=mode_list, seed=seed
    )
    _emit(result, records, report, as_json, write_prefeval_report, prefeval_markdown)


if __name__ == "__main__":
    eval_group()
