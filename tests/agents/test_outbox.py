"""The outbox's bookkeeping: which outputs a row must keep until Kafka acknowledges them."""

import asyncio
from collections import Counter

import pytest

from flead_app.agents.outbox import Outbox


def entries(*offsets: int) -> list[tuple[int, str, str, str]]:
    return [(o, "topic", "key", f"value {o}") for o in offsets]


def test_entries_stay_while_their_sends_are_unacknowledged():
    async def go():
        loop = asyncio.get_running_loop()
        box = Outbox([], Counter())
        first, second = loop.create_future(), loop.create_future()
        box.track(3, 10, [first, second])
        assert box.keep(entries(10, 11), partition=3) == tuple(entries(10))
        assert box.keep(entries(10), partition=4) == ()  # another partition's offset 10
        first.set_result(None)
        await asyncio.sleep(0)
        assert box.pending(3, 10), "one of two sends is still in flight"
        second.set_result(None)
        await asyncio.sleep(0)
        assert not box.pending(3, 10)
        assert box.keep(entries(10), partition=3) == ()

    asyncio.run(go())


def test_a_failed_send_keeps_its_entry_and_is_counted():
    async def go():
        box = Outbox([], Counter())
        fut = asyncio.get_running_loop().create_future()
        box.track(0, 5, [fut])
        fut.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)
        return box

    box = asyncio.run(go())
    assert box.counters["outputs_never_acknowledged"] == 1 and box.pending(0, 5)


def test_restored_entries_are_dropped_unless_sent_again_here():
    """A new process knows none of the old one's sends: restored entries are either re-sent by a
    skipped replay (and tracked again) or belong to committed, hence flushed, messages."""
    box = Outbox([], Counter())
    assert box.keep(entries(1, 2, 3), partition=0) == ()


@pytest.mark.parametrize("offsets", [[], [7], [7, 7, 9]])
def test_resend_sends_only_the_skipped_message_s_entries(offsets):
    sent = []

    class Topic:
        def get_topic_name(self):
            return "topic"

        async def send(self, key, value):
            sent.append((key, value))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

    async def go():
        box = Outbox([Topic()], Counter())
        return await box.resend(entries(*offsets), partition=0, offset=7), box

    count, box = asyncio.run(go())
    assert count == offsets.count(7) == len(sent)
    assert all(value == b"value 7" for _, value in sent)
