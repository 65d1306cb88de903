"""Stream heartbeats: tell each stream's consumer the producer's high-water mark."""

import logging
import uuid

from reliability.envelope import ENVELOPE_VERSION, HEARTBEAT, KIND, TASK, envelope_sign
from reliability.exceptions import PublishError
from reliability.models import StreamCounter
from reliability.produce.publisher import publisher

logger = logging.getLogger(__name__)


def stream_heartbeat_send(*, using: str = "default") -> int:
    """Publish one heartbeat per stream produced in database ``using``; return how many went out.

    Heartbeats carry no effect and are safe to lose: the next one repeats them.
    """
    sent = 0
    for counter in StreamCounter.objects.using(using).exclude(task_name=""):
        try:
            publisher().publish(
                task_name=counter.task_name,
                queue=counter.queue,
                message_id=str(uuid.uuid4()),
                envelope=envelope_sign(
                    {
                        "v": ENVELOPE_VERSION,
                        # The address: the stream's consumer, the only task it may move.
                        TASK: counter.task_name,
                        KIND: HEARTBEAT,
                        "stream": counter.stream,
                        "high": counter.last_seq,
                    }
                ),
            )
        except PublishError as exc:
            logger.warning("heartbeat of stream %s not published: %s", counter.stream, exc)
            break
        sent += 1
    return sent
