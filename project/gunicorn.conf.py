"""gunicorn's configuration for the web tier (``make web``; the systemd unit and Procfile use it).

Everything from the environment: ``PORT`` (8000) on ``WEB_BIND_HOST`` (127.0.0.1: put a proxy in
front), ``WEB_CONCURRENCY`` worker processes (2), ``WEB_THREADS`` threads each (1).
"""

import os

bind = f"{os.environ.get('WEB_BIND_HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "1"))
wsgi_app = "project.wsgi:application"
# A request that takes longer than this is a stuck worker: gunicorn replaces it.
timeout = int(os.environ.get("WEB_TIMEOUT_S", "30"))
graceful_timeout = 20
# Behind a proxy on the same host: trust its X-Forwarded-* headers (DJANGO_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("WEB_FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn's control socket (gunicornc) defaults to one path per user: every gunicorn of a host
# (the demo's, the tests', the bench's) would take it from the others. Nothing here uses it.
control_socket_disable = True
accesslog = "-"
# gunicorn's default format without %(u)s, the user name of an "Authorization: Basic" header:
# a client that sends its API key that way (curl -u KEY:) would have it written to the log.
access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
