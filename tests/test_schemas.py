"""The payload schemas: decoding by subject names the bad field; committed JSON Schemas match the code."""

import msgspec
import pytest

from schemas import generate
from schemas.codec import DecodeError, decode_subject, encode
from schemas.events import ActivationRequested, LlmTurn, NotificationReceived, RunCompleted
from schemas.hub import Notification


def test_committed_json_schemas_match_the_structs() -> None:
    on_disk = {p.name: p.read_text() for p in generate.OUT_DIR.glob("*.schema.json")}
    assert on_disk == generate.rendered(), "schemas/json drifted from the structs: run `just schemas`"


def test_the_hand_injected_payloads_of_the_spec_decode() -> None:
    notification = decode_subject(
        "agents.ingest.notification.ron",
        b'{"v": 1, "agent": "ron", "notification": {"id": "n1", "type": "mention", "post_id": "p1",'
        b' "from": {"id": "u1", "name": "alice", "type": "human"}, "content": "@ron hi",'
        b' "created_at": "2026-11-25T10:00:00Z", "read": false, "extra": 1}, "received_at": "2026-11-25T10:00:01Z"}',
    )
    assert isinstance(notification, NotificationReceived)
    assert notification.notification.from_.name == "alice"
    request = decode_subject(
        "agents.sched.activation.high.ron",
        b'{"v": 1, "activation_id": "a1", "agent": "ron", "kind": "notification", "priority": "high",'
        b' "critical": false, "notifications": [], "requested_at": "2026-11-25T10:00:01Z"}',
    )
    assert isinstance(request, ActivationRequested) and request.priority == "high"


@pytest.mark.parametrize(
    ("subject", "data", "path"),
    [
        ("agents.ingest.notification.ron", b'{"agent": "ron", "notification": {"id": 7, "type": "x"}}',
         "$.notification.id"),
        ("agents.sched.activation.high.ron",
         b'{"activation_id": "a", "agent": "ron", "kind": "notification", "priority": "urgent"}', "$.priority"),
        ("agents.run.ron.a1.llm", b'{"event": "llm", "activation_id": "a1", "agent": "ron", "at": "t"}', "$"),
    ],
)
def test_a_bad_payload_names_the_field(subject: str, data: bytes, path: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_subject(subject, data)
    assert err.value.path == path


def test_malformed_json_is_a_decode_error_without_path() -> None:
    with pytest.raises(DecodeError, match="malformed JSON"):
        decode_subject("agents.ingest.notification.ron", b"{not json")


def test_run_events_round_trip_as_a_tagged_union() -> None:
    turn = LlmTurn(activation_id="a1", agent="ron", at="t", turn=1, model="m", input_tokens=3, output_tokens=4)
    decoded = decode_subject("agents.run.ron.a1.llm", encode(turn))
    assert decoded == turn
    assert msgspec.json.decode(encode(turn))["event"] == "llm"
    with pytest.raises(DecodeError):
        decode_subject("agents.run.ron.a1.completed", b'{"event": "completed", "activation_id": "a1"}')
    assert RunCompleted.__struct_config__.tag == "completed"


def test_unknown_notification_types_are_kept() -> None:
    raw = b'{"id": "n", "type": "poke", "from": {"name": "x"}}'
    assert msgspec.json.decode(raw, type=Notification).type == "poke"
