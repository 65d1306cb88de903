"""The reliability app's exceptions: one small hierarchy, messages a user can act on."""


class ReliabilityError(Exception):
    """Base class of every error the reliability app raises."""


class PoisonMessage(ReliabilityError):
    """Raise (or subclass) in a handler for a message that can never succeed as it is.

    The middleware records it as a dead letter at once and acknowledges it, instead
    of requeueing it until the delivery limit. Replay it once the cause is fixed.
    """


class OutboxUsageError(ReliabilityError):
    """The outbox was used in a way that would break the commit-together rule."""


class InvalidEnvelope(ReliabilityError):
    """A consumed message is not a well-formed envelope; it can never succeed."""


class PublishError(ReliabilityError):
    """A publish was not confirmed by the broker; the outbox row stays pending."""


class BrokerUnavailable(PublishError):
    """The broker could not be reached (connection refused, reset, or circuit open)."""


class PublishNacked(PublishError):
    """The broker answered basic.nack: it did not take responsibility for the message."""


class PublishReturned(PublishError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class PublishTimeout(PublishError):
    """No confirm arrived in time; the message may or may not be stored."""


class ClockMovedBackwards(ReliabilityError):
    """The wall clock went back further than the snowflake generator may wait out."""


class WorkerIdUnavailable(ReliabilityError):
    """No snowflake worker id is safely held, so no id can be issued without risking a duplicate."""


class StreamsNotDrained(ReliabilityError):
    """Streams cannot move to other queues while messages of theirs are in flight; the message says which."""
