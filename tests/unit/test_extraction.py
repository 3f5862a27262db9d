"""What we ask the LLM and what we accept back (memos_pipeline/extraction.py), and ``LLMClient`` against the fake
OpenAI-compatible server (fakes/llm.py, a real process spoken to by the real ``openai`` client)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from pydantic import ValidationError

from fakes.llm import FakeLLM, answer, route_of
from memos_pipeline.config import Settings
from memos_pipeline.llm import LLMClient, LLMOutputError, Usage
from memos_pipeline.stages import prompts as ex
from memos_pipeline.text.chunking import Turn

pytestmark = pytest.mark.unit

ZH = [
    Turn("u0", "c0", "user", "我暑假定好去广州旅游，住宿的话有哪些连锁酒店可选？", chat_time="2024-06-01 10:00"),
    Turn("u1", "c1", "assistant", "您可以考虑【七天、全季、希尔顿】等等"),
    Turn("u2", "c2", "user", "我选七天"),
    Turn("u3", "c3", "assistant", "好的，有其他问题再问我。"),
]
EN = [
    Turn("e0", "e0", "user", "Yesterday I adopted a cat named Miso.", chat_time="2023-05-08"),
    Turn("e1", "e1", "assistant", "Congratulations! How is Miso settling in?"),
]


def fact(value: str, sources: list[str], **kw: object) -> dict[str, object]:
    return {"memory_key": "k", "memory_value": value, "memory_type": "UserMemory", "tags": [], "sources": sources, **kw}


def facts(*items: dict[str, object]) -> ex.FactsOut:
    return ex.FactsOut.model_validate({"memories": list(items)})


# ------------------------------------------------------------------------------------------------ pure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我选七天", True),
        ("用户选择了七天酒店 (Hotel 7 Days)", True),  # 9 CJK vs 9 Latin letters: at least a third
        ("The user chose Hotel 7 Days", False),
        ("I like 北京", False),  # 2 CJK vs 5 Latin letters: less than a third
        ("北京 ab", True),  # 2 vs 2
        ("北 abc", False),  # 1 vs 3: a quarter
        ("", False),
        ("2024-06-01 12:00 !!", False),  # no letters at all is not Chinese
        ("々〆〤", False),  # CJK symbols are not ideographs
    ],
)
def test_mostly_cjk(text: str, expected: bool) -> None:
    assert ex.mostly_cjk(text) is expected


def test_render_for_llm_numbers_messages_and_shows_their_time() -> None:
    lines = ex.render_for_llm(ZH).splitlines()
    assert lines[0] == "[m0] (Saturday 1 June 2024, 10:00 am) user: 我暑假定好去广州旅游，住宿的话有哪些连锁酒店可选？"
    assert lines[2] == "[m2] user: 我选七天"
    assert len(lines) == 4
    named = [Turn("x", "x", "user", "hi", name="Caroline")]
    assert ex.render_for_llm(named) == "[m0] Caroline: hi"
    prompt = ex.facts_prompt(ZH, "demo_user")
    assert prompt.startswith("Conversation of user 'demo_user':\n[m0]")


def test_map_sources_gives_client_ids_in_order_without_repeats() -> None:
    assert ex.map_sources(["m2", "[m0]", " m2 ", "m1"], ZH) == ["c2", "c0", "c1"]
    assert ex.map_sources([], ZH) == []


def test_check_facts_accepts_valid_output() -> None:
    out = facts(fact("用户计划暑假去广州旅游", ["m0"]), fact("用户选择了七天酒店", ["[m1]", "m2"]))
    ex.check_facts(out, ZH)
    ex.check_facts(facts(), ZH)  # nothing worth remembering is a valid answer


@pytest.mark.parametrize("ref", ["m4", "m10", "msg1", "4", "e0", "m-1", ""])
def test_check_facts_rejects_sources_that_are_not_message_ids(ref: str) -> None:
    with pytest.raises(ValueError, match=r"memories\[0\]\.sources: .* is not a message id; use m0\.\.m3"):
        ex.check_facts(facts(fact("用户选择了七天酒店", [ref])), ZH)


def test_check_facts_wants_the_conversations_language() -> None:
    with pytest.raises(ValueError, match=r"memories\[1\]\.memory_value must be written in Chinese"):
        ex.check_facts(facts(fact("用户选择了七天酒店", ["m2"]), fact("The user chose Hotel 7 Days", ["m2"])), ZH)
    # An English conversation is not held to a language (only Chinese stays Chinese).
    ex.check_facts(facts(fact("The user adopted a cat named Miso on 2023-05-07", ["m0"])), EN)
    ex.check_facts(facts(fact("用户收养了一只猫", ["m0"])), EN)


def test_fact_schema() -> None:
    parsed = facts(fact("  用户选择了七天酒店  ", ["m2"], extra_field="ignored"))
    assert parsed.memories[0].memory_value == "用户选择了七天酒店"  # whitespace stripped, extras ignored
    bad = [
        fact("v", []),  # at least one source
        fact("", ["m0"]),  # empty value
        fact("v", ["m0"], memory_type="RawMemory"),
        fact("v", ["m0"], tags=[str(i) for i in range(11)]),
        {"memory_key": "k", "memory_value": "v", "sources": ["m0"]},  # memory_type required
    ]
    for item in bad:
        with pytest.raises(ValidationError):
            facts(item)
    with pytest.raises(ValidationError):
        ex.FactsOut.model_validate({"facts": []})  # the wrong top-level key
    with pytest.raises(ValidationError):
        ex.FactsOut.model_validate({"memories": [fact("v", ["m0"])] * 51})


def prefs(
    explicit: list[dict[str, object]] | None = None, implicit: list[dict[str, object]] | None = None
) -> ex.PreferencesOut:
    return ex.PreferencesOut.model_validate(
        {"explicit_preferences": explicit or [], "implicit_preferences": implicit or []}
    )


def test_check_preferences() -> None:
    good = prefs(
        [{"preference": "用户选择了七天酒店", "sources": ["m2"]}],
        [
            {
                "preference": "用户偏好经济型连锁酒店",
                "reasoning": "用户在几个选项中选了最便宜的七天",
                "sources": ["m1", "m2"],
            }
        ],
    )
    ex.check_preferences(good, ZH)
    ex.check_preferences(prefs(), ZH)
    assert ex.PreferencesOut.model_validate({}).explicit_preferences == []  # both lists default to empty
    with pytest.raises(ValueError, match=r"implicit_preferences\[0\]\.sources: 'm9'"):
        ex.check_preferences(
            prefs(implicit=[{"preference": "用户偏好经济型酒店", "reasoning": "选了七天", "sources": ["m9"]}]), ZH
        )
    with pytest.raises(ValueError, match=r"explicit_preferences\[0\]\.preference must be written in Chinese"):
        ex.check_preferences(prefs([{"preference": "The user chose Hotel 7 Days", "sources": ["m2"]}]), ZH)
    ex.check_preferences(prefs([{"preference": "The user has a cat", "sources": ["m0"]}]), EN)


def test_preference_schema_requires_reasoning_for_implicit_ones() -> None:
    with pytest.raises(ValidationError, match="reasoning"):
        prefs(implicit=[{"preference": "用户偏好经济型酒店", "sources": ["m2"]}])
    with pytest.raises(ValidationError):
        prefs([{"preference": "用户选择了七天酒店", "sources": []}])


def test_check_merge_and_target_index() -> None:
    ex.check_merge(ex.MergeDecision(action="new"), 0)
    ex.check_merge(ex.MergeDecision(action="duplicate", target="e1"), 2)
    ex.check_merge(ex.MergeDecision(action="update", target="[e0]", merged_value="merged"), 1)
    assert ex.target_index(ex.MergeDecision(action="duplicate", target="[e3]")) == 3
    with pytest.raises(ValueError, match=r"target: must be one of e0\.\.e1"):
        ex.check_merge(ex.MergeDecision(action="duplicate", target="e2"), 2)
    with pytest.raises(ValueError, match="target"):
        ex.check_merge(ex.MergeDecision(action="conflict", merged_value="x"), 2)
    with pytest.raises(ValueError, match="merged_value: required for action 'update'"):
        ex.check_merge(ex.MergeDecision(action="update", target="e0"), 1)
    with pytest.raises(ValidationError):
        ex.MergeDecision.model_validate({"action": "replace"})
    assert ex.merge_prompt("新", ["旧一", "旧二"]) == "NEW: 新\nEXISTING:\n[e0] 旧一\n[e1] 旧二"


def test_prompts_are_told_apart_by_the_fake_server() -> None:
    """fakes/llm.py routes by the system prompt; keep the markers it relies on in the prompts."""
    assert route_of(ex.FACTS_SYSTEM) == "facts"
    assert route_of(ex.PREFERENCES_SYSTEM) == "preferences"
    assert route_of(ex.MERGE_SYSTEM) == "merge"


# ------------------------------------------------------------------------------------------------ LLMClient


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture
def llm(fake_llm: FakeLLM) -> LLMClient:
    fake_llm.reset()
    cfg = Settings(
        llm_base_url=fake_llm.base_url, llm_model="fake-model", llm_api_key="test", llm_timeout_s=1.0, llm_max_retries=2
    )
    return LLMClient(cfg)


GOOD = {"memories": [fact("用户选择了七天酒店", ["m2"])]}


def ask(llm: LLMClient) -> ex.FactsOut:
    return llm.chat_json(ex.FACTS_SYSTEM, ex.facts_prompt(ZH, "u"), ex.FactsOut, check=lambda o: ex.check_facts(o, ZH))


def test_chat_json_valid_answer(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [answer(GOOD)]})
    out = ask(llm)
    assert out.memories[0].memory_value == "用户选择了七天酒店"
    u = llm.usage
    assert (u.calls, u.retries, u.repairs) == (1, 0, 0)
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    (call,) = fake_llm.calls()["calls"]
    assert call["route"] == "facts" and call["user"].startswith("Conversation of user 'u':")


def test_chat_json_strips_code_fences(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [{"content": "```json\n" + json.dumps(GOOD, ensure_ascii=False) + "\n```"}]})
    assert ask(llm).memories[0].sources == ["m2"]
    assert llm.usage.repairs == 0


@pytest.mark.parametrize(
    "bad",
    [
        "not json {",
        '{"memories": [{"memory_key": "k"}]}',  # schema: fields missing
        json.dumps({"memories": [fact("用户选择了七天酒店", ["m7"])]}),  # a source that does not exist
        json.dumps({"memories": [fact("The user chose Hotel 7 Days", ["m2"])]}),  # the wrong language
    ],
)
def test_one_repair_round_shows_the_model_its_error(llm: LLMClient, fake_llm: FakeLLM, bad: str) -> None:
    fake_llm.script(routes={"facts": [{"content": bad}, answer(GOOD)]})
    out = ask(llm)
    assert out.memories[0].memory_value == "用户选择了七天酒店"
    assert (llm.usage.calls, llm.usage.repairs) == (2, 1)
    first, repair = fake_llm.calls()["calls"]
    assert first["n_messages"] == 2 and repair["n_messages"] == 4
    assert repair["user"] == first["user"]  # the same conversation, plus the bad answer and the error
    assert repair["last"].startswith("Your answer was invalid: ")


def test_two_bad_answers_raise_llm_output_error(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [{"content": "not json {"}, {"content": "[]"}]})
    with pytest.raises(LLMOutputError, match="invalid LLM output after one repair"):
        ask(llm)
    assert (llm.usage.calls, llm.usage.repairs) == (2, 1)
    assert fake_llm.calls()["total"] == 2  # no third try: a wrong answer is not transient


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_http_errors_are_retried(llm: LLMClient, fake_llm: FakeLLM, status: int) -> None:
    fake_llm.script(routes={"facts": [{"status": status}, {"status": status}, answer(GOOD)]})
    assert ask(llm).memories
    assert (llm.usage.calls, llm.usage.retries, llm.usage.repairs) == (1, 2, 0)
    assert [c["status"] for c in fake_llm.calls()["calls"]] == [status, status, 200]


def test_retries_run_out_and_raise_the_transient_error(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(defaults={"facts": {"status": 429}})
    with pytest.raises(openai.RateLimitError):
        ask(llm)
    assert (llm.usage.calls, llm.usage.retries) == (0, 2)
    assert fake_llm.calls()["total"] == 3  # llm_max_retries=2: three tries in all


def test_a_slow_answer_times_out_and_is_retried(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [{"delay": 2.0, **answer(GOOD)}, {"drop": True}, answer(GOOD)]})
    assert ask(llm).memories
    assert (llm.usage.calls, llm.usage.retries) == (1, 2)  # a timeout, then a dropped connection, then the answer


def test_client_errors_are_not_retried(llm: LLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.script(routes={"facts": [{"status": 400}]})
    with pytest.raises(openai.BadRequestError):
        ask(llm)
    assert llm.usage.retries == 0 and fake_llm.calls()["total"] == 1


def test_no_llm_configured() -> None:
    with pytest.raises(RuntimeError, match="no LLM configured"):
        LLMClient(Settings(llm_base_url=None, llm_model=None))


def test_usage_adds_up() -> None:
    a, b = Usage(calls=1, prompt_tokens=10, completion_tokens=5), Usage(calls=2, retries=1, repairs=1)
    a.add(b)
    assert a.as_dict() == {"calls": 3, "prompt_tokens": 10, "completion_tokens": 5, "retries": 1, "repairs": 1}


def test_fake_embeddings_through_the_openai_embedder(fake_llm: FakeLLM) -> None:
    from memos_pipeline.embedders import OpenAIEmbedder

    emb = OpenAIEmbedder("fake-embedding", fake_llm.base_url, "test", batch_size=2)
    vecs = emb.embed(["我选七天", "hotel", "我选七天"])
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[2]) and not np.allclose(vecs[0], vecs[1])
