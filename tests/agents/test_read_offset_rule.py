"""Faust's fetch loop across a rebalance, with FLEAD's corrections installed (``faust_patches``)."""

from __future__ import annotations

import asyncio


def test_a_delivery_cancelled_by_a_revocation_does_not_drop_messages_after_the_rebalance(faust_app, monkeypatch):
    """Faust's own ``_drain_messages`` and rebalance bookkeeping, only the fetches and the
    delivery faked: the loop is delivering offset 7 when the partition is revoked (its agent's
    buffer is full), the revocation stops the flow, which cancels that delivery. The partition
    is assigned back with its committed offset at 3: offsets 3 to 7 must all be delivered, where
    Faust dropped 3 to 6 as already read and delivered 7 first."""
    from faust.types.tuples import TP
    from faust.types.tuples import ConsumerMessage as Message

    async def scenario() -> list[int]:
        consumer = faust_app.consumer
        tp = TP("t-read-offset", 0)
        monkeypatch.setattr(faust_app.topics, "acks_enabled_for", lambda topic: topic == tp.topic)
        batches: asyncio.Queue[list[int]] = asyncio.Queue()
        delivered: list[int] = []
        buffer_full = asyncio.Event()
        blocked = asyncio.Event()

        async def getmany(timeout: float):  # noqa: ANN202 - Consumer.getmany's batches, in its flow control
            await consumer.wait(consumer.can_resume_flow)
            for offset in await batches.get():
                if not consumer.flow_active:
                    break
                yield tp, Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)

        async def callback(message: Message) -> None:  # the conductor: delivery waits while the buffer is full
            if message.offset == 7 and not buffer_full.is_set():
                blocked.set()
                await buffer_full.wait()
            delivered.append(message.offset)

        async def no_app_callbacks(*_: object) -> None:
            consumer.stop_flow()  # what Faust's app does first on revocation

        # the consumer's events, made in this test's loop (an asyncio event belongs to the first loop using it)
        for name in ("can_resume_flow", "suspend_flow", "_stopped", "_crashed"):
            monkeypatch.setattr(consumer, name, asyncio.Event())
        monkeypatch.setattr(consumer, "_loop", asyncio.get_running_loop())  # likewise its loop
        monkeypatch.setattr(consumer, "getmany", getmany)
        monkeypatch.setattr(consumer, "callback", callback)
        monkeypatch.setattr(consumer, "_on_partitions_revoked", no_app_callbacks)
        monkeypatch.setattr(consumer, "_on_partitions_assigned", lambda *_: asyncio.sleep(0))
        monkeypatch.setattr(faust_app, "on_rebalance_return", lambda: None)

        class Fetcher:
            _stopped = asyncio.Event()

        consumer.resume_flow()
        drain = asyncio.ensure_future(consumer._drain_messages(Fetcher()))
        try:
            await batches.put([5, 6, 7])
            await asyncio.wait_for(
                asyncio.wait([drain, asyncio.ensure_future(blocked.wait())], return_when="FIRST_COMPLETED"), 5
            )
            assert not drain.done(), drain.exception()
            await consumer.on_partitions_revoked({tp})
            await asyncio.sleep(0.1)  # the loop goes back to waiting for the flow
            buffer_full.set()  # the agent's buffer drained meanwhile
            await consumer.on_partitions_assigned({tp}, 2)
            consumer.resume_flow()  # Faust's recovery resumes fetching before seeking to committed offsets
            await batches.put([3, 4, 5, 6, 7])
            for _ in range(50):
                if len(delivered) >= 7:
                    break
                await asyncio.sleep(0.05)
            return delivered
        finally:
            Fetcher._stopped.set()
            consumer.stop_flow()
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
            for state in (consumer._read_offset, consumer._gap, consumer._acked, consumer._acked_index):
                state.pop(tp, None)

    assert asyncio.run(scenario()) == [5, 6, 3, 4, 5, 6, 7]
