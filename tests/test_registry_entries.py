"""The registry files a lone subscriber under its key by itself and several in a set: waking,
removing and counting are the same either way, through every change between the two."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cbhub.waiting.registry import ALL, Registry


@dataclass(frozen=True)
class FakeEvent:
    token: str
    correlation_id: str | None = None
    group: str | None = None


@dataclass(eq=False)
class Recorder:
    keys: tuple[Any, ...]
    kind: str = "long_poll"
    seen: list[FakeEvent] = field(default_factory=list)
    stopped: bool = False

    def push(self, event: FakeEvent) -> None:
        self.seen.append(event)

    def shut_down(self) -> None:
        self.stopped = True


def test_one_then_several_then_one_subscriber_under_a_key():
    registry = Registry()
    first, second = Recorder((("token", "a"),)), Recorder((("token", "a"),))
    registry.add(first)
    registry.publish(FakeEvent("a"))
    registry.add(second)
    registry.add(second)  # filed twice: still once
    registry.publish(FakeEvent("a"))
    assert (len(first.seen), len(second.seen)) == (2, 1)
    assert len(registry) == 2 and registry.count_by_kind() == {"long_poll": 2}
    registry.remove(first)
    registry.publish(FakeEvent("a"))
    assert (len(first.seen), len(second.seen)) == (2, 2)
    registry.remove(first)  # removed twice: nothing happens
    registry.remove(second)
    assert len(registry) == 0 and registry._by_key == {}


def test_a_subscriber_under_many_keys_is_pushed_an_event_once():
    registry = Registry()
    many = Recorder((("token", "a"), ("token", "b"), ALL), kind="websocket")
    lone = Recorder((("group", "g"),))
    registry.add(many)
    registry.add(lone)
    registry.publish(FakeEvent("a", group="g"))
    assert (len(many.seen), len(lone.seen)) == (1, 1)
    registry.publish(FakeEvent("c"))  # under ALL only
    assert (len(many.seen), len(lone.seen)) == (2, 1)
    assert registry.count_by_kind() == {"websocket": 1, "long_poll": 1}
    registry.shut_down()
    assert many.stopped and lone.stopped
    registry.remove(many)
    registry.remove(lone)
    assert registry._by_key == {}


def test_a_subscriber_removing_itself_while_woken_does_not_stop_the_others():
    registry = Registry()

    class Leaving(Recorder):
        def push(self, event: FakeEvent) -> None:
            super().push(event)
            registry.remove(self)

    leaving = [Leaving((("token", "a"),)) for _ in range(3)]
    for subscriber in leaving:
        registry.add(subscriber)
    registry.publish(FakeEvent("a"))
    assert all(len(s.seen) == 1 for s in leaving) and len(registry) == 0
