"""The client cores' ActAs exchange (lucidd.client.core.Core.act_as), without I/O.

Frames the cores build are decoded with the daemon-side decoders; replies are encoded with
protocol.encode_frame. The front ends on a real daemon are in tests/integration/test_act_as.py.
"""

from __future__ import annotations

import os

import pytest

from lucidd import client as c
from lucidd import protocol as p
from lucidd.client.core import act_as_uid
from lucidd.errors import BusyError, ForbiddenError, InternalError, UnavailableError

SESSION = bytes(range(16))
MAX_PAYLOAD = 1 << 20


def cores() -> list[c.DataCore | c.ControlCore]:
    return [c.DataCore(), c.ControlCore()]


def decoded(frame: bytes, core: c.DataCore | c.ControlCore) -> p.Message:
    decoder = (
        p.data_request_decoder(MAX_PAYLOAD, 10)
        if isinstance(core, c.DataCore)
        else p.control_request_decoder()
    )
    decoder.receive_data(frame)
    event = decoder.next_event()
    assert isinstance(event, p.FrameMessage)
    return event.message


def send_a_request(core: c.DataCore | c.ControlCore) -> int:
    """Register a chunk (data) or a health request (control); its req."""
    if isinstance(core, c.DataCore):
        return core.chunk(SESSION, 0, 1)[0]
    return core.health().req


@pytest.mark.parametrize("core", cores())
def test_act_as_frame_is_the_daemons_act_as(core: c.DataCore | c.ControlCore) -> None:
    frame = core.act_as(1001)
    assert decoded(frame, core) == p.ActAs(req=c.FIRST_REQ, uid=1001)
    assert core.act_as_pending and core.acting_as is None


@pytest.mark.parametrize("core", cores())
def test_acting_as_settles_it_and_the_connection_goes_on(core: c.DataCore | c.ControlCore) -> None:
    core.act_as(1001)
    assert core.receive_data(p.encode_frame(p.ActingAs(req=c.FIRST_REQ, uid=1001))) == []
    assert not core.act_as_pending
    assert core.acting_as == 1001 and core.act_as_error is None
    assert not core.broken
    assert send_a_request(core) == c.FIRST_REQ + 1


@pytest.mark.parametrize("core", cores())
def test_a_refusal_is_its_typed_error_and_breaks_the_core(core: c.DataCore | c.ControlCore) -> None:
    core.act_as(1001)
    refusal = p.Error(req=c.FIRST_REQ, code="forbidden", message="uid 5 may not act as another")
    assert core.receive_data(p.encode_frame(refusal)) == []
    assert not core.act_as_pending
    assert isinstance(core.act_as_error, ForbiddenError)
    assert core.act_as_error.message == "uid 5 may not act as another"
    assert core.acting_as is None
    assert core.broken  # the daemon closes the connection after a refusal
    with pytest.raises(UnavailableError, match="forbidden"):
        send_a_request(core)


@pytest.mark.parametrize("core", cores())
def test_a_connection_level_error_before_the_answer_is_the_answer(
    core: c.DataCore | c.ControlCore,
) -> None:
    core.act_as(1001)
    core.receive_data(p.encode_frame(p.Error(req=0, code="busy", message="too many connections")))
    assert isinstance(core.act_as_error, BusyError)
    assert core.act_as_error.retryable


@pytest.mark.parametrize("core", cores())
def test_the_end_of_the_stream_settles_it_as_unavailable(core: c.DataCore | c.ControlCore) -> None:
    core.act_as(1001)
    core.connection_lost("lucidd closed the connection")
    assert not core.act_as_pending
    assert isinstance(core.act_as_error, UnavailableError)


@pytest.mark.parametrize("core", cores())
def test_an_answer_for_another_uid_is_a_broken_daemon(core: c.DataCore | c.ControlCore) -> None:
    core.act_as(1001)
    core.receive_data(p.encode_frame(p.ActingAs(req=c.FIRST_REQ, uid=0)))
    assert isinstance(core.act_as_error, InternalError)
    assert core.broken and core.acting_as is None


@pytest.mark.parametrize("core", cores())
def test_an_acting_as_nobody_asked_for_breaks_the_core(core: c.DataCore | c.ControlCore) -> None:
    core.receive_data(p.encode_frame(p.ActingAs(req=7, uid=0)))
    assert core.broken


@pytest.mark.parametrize("core", cores())
def test_act_as_must_be_the_first_request(core: c.DataCore | c.ControlCore) -> None:
    send_a_request(core)
    with pytest.raises(ValueError, match="first request"):
        core.act_as(1001)


@pytest.mark.parametrize("uid", [-1, p.MAX_UID + 1, True, 1.0, "1001"])
def test_a_uid_that_is_not_a_uid_is_a_caller_bug(uid: object) -> None:
    with pytest.raises(ValueError, match="uid"):
        c.DataCore().act_as(uid)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="act_as"):
        act_as_uid(uid)  # type: ignore[arg-type]


def test_front_ends_ask_only_for_another_uid() -> None:
    assert act_as_uid(None) is None
    assert act_as_uid(os.geteuid()) is None
    other = 0 if os.geteuid() else 1
    assert act_as_uid(other) == other


def test_a_bad_act_as_is_refused_before_connecting() -> None:
    # No socket there: a ValueError (not UnavailableError) shows the check came first.
    for make in (c.DataClient, c.ControlClient):
        with pytest.raises(ValueError, match="act_as"):
            make("/nonexistent-lucidd", act_as=-5)
