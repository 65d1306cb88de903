"""Dead letters as the consumer records them (``reliability.consume.dead_letter``)."""

from django.test import TestCase

from reliability.consume.dead_letter import dead_letter_record
from reliability.models import DeadLetter


class DeadLetterRecordTests(TestCase):
    def test_nul_characters_anywhere_are_stored_escaped_not_refused(self) -> None:
        # PostgreSQL refuses NUL in text and jsonb; a dead letter that cannot be written blocks the drain.
        envelope = {"v": 1, "payload": {"note\x00key": ["a\x00b"]}, "message_id": "x\x00"}
        letter = dead_letter_record(
            handler="beans.deduct",
            reason=DeadLetter.Reason.INVALID_ENVELOPE,
            detail="bad\x00detail",
            envelope=envelope,
            headers={"h": "v\x00"},
        )
        letter.refresh_from_db()
        self.assertEqual(letter.detail, "bad\\x00detail")
        self.assertEqual((letter.envelope or {})["payload"], {"note\\x00key": ["a\\x00b"]})
        self.assertEqual(letter.headers, {"h": "v\\x00"})
