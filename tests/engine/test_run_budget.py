"""The run budget and the run's counters on their own, without a run: reserve, settle, stop."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from corral._client import Client, Counts, Halt, RunBudget, Stop
from corral.job import Budget, ModelRef
from corral.models.base import Completion, Message, Request, Usage
from corral.models.fake import FakeModel


def _budget(**limits: object) -> tuple[RunBudget, Counts, Halt]:
    counts = Counts()
    halt = Halt(asyncio.Event())
    return RunBudget(Budget.model_validate(limits), counts, halt, "fake"), counts, halt


def _client() -> Client:
    return Client.build(FakeModel(), ModelRef.parse("fake"), 4)


REQUEST = Request(messages=(Message("user", "x" * 400),), max_tokens=50)


def test_counts_move_records_between_states():
    c = Counts(states={"pending": 5})
    c.move("pending", "leased", 3)
    c.move("leased", "done")
    assert c.states == {"pending": 2, "leased": 2, "done": 1}


def test_an_unknown_cost_makes_the_run_cost_unknown():
    c = Counts()
    c.paid(Usage(10, 5, cost=Decimal("0.01")))
    assert (c.made, c.input_tokens, c.output_tokens, c.cost) == (1, 10, 5, Decimal("0.01"))
    c.paid(Usage(1, 1))
    assert c.cost is None


def test_calls_in_flight_count_against_max_calls():
    budget, counts, halt = _budget(max_calls=2)
    counts.made = 1
    assert budget.over_budget() is None
    budget.in_flight = 1
    assert budget.over_budget() == "budget: max_calls 2 reached"
    with pytest.raises(Stop):
        budget.check()
    assert halt.event.is_set() and halt.reason == "budget: max_calls 2 reached"


def test_a_cost_cap_on_a_model_without_a_price_says_how_to_fix_it():
    budget, counts, _ = _budget(max_cost_usd="1")
    counts.cost = None
    budget.unpriced = "openai:gpt-x"
    reason = budget.over_budget()
    assert reason is not None and "`openai:gpt-x` reports no price" in reason


def test_reserve_and_settle_learn_the_price_and_the_answer_size():
    async def go() -> None:
        budget, _, _ = _budget(max_cost_usd="1", max_tokens=10_000)
        client = _client()
        hold = await budget.reserve(client, REQUEST)
        assert hold.probe and hold.cost == 0 and hold.tokens == 100 + 50  # prompt/4 + max_tokens
        assert budget.reserved_calls == 1 and budget.tokens_reserved == 150
        budget.settle(client, hold, Completion("{}", usage=Usage(100, 20, cost=Decimal("0.25"))))
        assert budget.reserved_calls == 0 and budget.tokens_reserved == 0 and hold.done
        second = await budget.reserve(client, REQUEST)
        assert not second.probe and second.cost == Decimal("0.25") and second.tokens == 100 + 20

    asyncio.run(go())


def test_a_call_without_room_waits_for_the_calls_in_flight_to_settle():
    async def go() -> None:
        budget, counts, halt = _budget(max_tokens=200)
        client = _client()
        first = await budget.reserve(client, REQUEST)  # 150 of 200 reserved
        waiting = asyncio.ensure_future(budget.reserve(client, REQUEST))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # no room while the first holds its reservation
        counts.input_tokens, counts.output_tokens = 100, 20
        budget.settle(client, first, Completion("{}", usage=Usage(100, 20)))
        with pytest.raises(Stop):  # 120 used + the next call's 120 would pass 200
            await waiting
        assert halt.reason == "budget: max_tokens 200 reached"

    asyncio.run(go())
