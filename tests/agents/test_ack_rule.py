"""Faust's consumer with FLEAD's acknowledgement rule (``faust_patches.ack_counts``) installed."""

from __future__ import annotations


def test_acknowledgements_from_before_a_rebalance_do_not_move_a_commit(faust_app, monkeypatch):
    """The consumer's own bookkeeping, through Faust's Message.ack: a message of an older generation,
    or of the generation whose partitions were just revoked, is done but commits nothing."""
    from faust.types.tuples import TP
    from faust.types.tuples import ConsumerMessage as Message

    consumer = faust_app.consumer
    tp = TP("t-ack-rule", 0)
    # a topic an agent consumes (the conductor learns them when the worker starts)
    monkeypatch.setattr(faust_app.topics, "acks_enabled_for", lambda topic: topic == tp.topic)

    def message(offset: int, generation: int) -> Message:
        m = Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp, generation_id=generation)
        consumer._unacked_messages.add(m)
        return m

    faust_app.consumer_generation_id = 5
    consumer.__dict__.pop("_flead_revoked_in", None)
    current, older = message(10, 5), message(11, 4)
    assert current.ack(consumer) is True and older.ack(consumer) is False
    assert consumer._acked[tp] == [10] and older.acked and older not in consumer._unacked_messages
    # partitions revoked in generation 5: what generation 5 still acknowledges counts for nothing
    consumer.__dict__["_flead_revoked_in"] = 5
    late = message(12, 5)
    assert late.ack(consumer) is False and consumer._acked[tp] == [10]
    faust_app.consumer_generation_id = 6  # assigned again: the new generation counts
    assert message(12, 6).ack(consumer) is True and consumer._acked[tp] == [10, 12]
    consumer._acked.pop(tp)
    consumer._acked_index.pop(tp)
