"""Django settings: the one place that reads the environment, split by concern.

Every value has a default that works on a developer machine (services on 127.0.0.1, see README)
and none of them is a production secret. Production sets ``DJANGO_ENV=production`` and must then
provide ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``, ``DATABASE_URL`` and
``CELERY_BROKER_URL`` (not guest).

    base         Django itself: environment, secrets, hosts, apps, templates, static, logging
    database     DATABASE_URL (and BEANS_DATABASE_URL) with the session deadlines
    domain       the trade and bean services' own settings (TRADES_*, the bean queues)
    reliability  the library's RELIABILITY_* settings from the environment, and this project's choices
    broker       Celery and RabbitMQ: connections, acks, queues, the beat schedule
"""

from .base import *  # noqa: F403
from .broker import *  # noqa: F403
from .database import *  # noqa: F403
from .domain import *  # noqa: F403
from .reliability import *  # noqa: F403
