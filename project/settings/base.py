"""Django itself: environment, secrets, hosts, apps, templates, static files, logging."""

import os
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent

ENVIRONMENT = env_str("DJANGO_ENV", "development")
if ENVIRONMENT not in {"development", "test", "production"}:
    raise ImproperlyConfigured("DJANGO_ENV must be development, test or production")
IS_PRODUCTION = ENVIRONMENT == "production"

DEBUG = env_bool("DJANGO_DEBUG", False)
if IS_PRODUCTION:
    # Secrets (and hosts) come from the environment only: no development default stands in.
    _missing = [
        name
        for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "CELERY_BROKER_URL")
        if not os.environ.get(name)
    ]
    if _missing:
        raise ImproperlyConfigured(f"DJANGO_ENV=production needs {', '.join(_missing)} in the environment")
    if DEBUG:
        raise ImproperlyConfigured("DJANGO_DEBUG cannot be on when DJANGO_ENV=production")
    # No user in the URL means guest to kombu. Per-role users: scripts/rabbitmq-users (README).
    _broker_users = {urlsplit(url).username for url in os.environ["CELERY_BROKER_URL"].split(";")}
    if _broker_users & {None, "", "guest"}:
        raise ImproperlyConfigured("CELERY_BROKER_URL must name a broker user of its own, not guest")
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-development-key-never-use-in-production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
if IS_PRODUCTION and (not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS):
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must name the hosts served in production, not '*'")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "ninja",  # the API framework: its management command and the docs page's static files
    "reliability",
    "edge",  # the HTTP edge: API clients and their keys (ApiKey), authentication, request parsing
    "beans",
    "trades",
    "project",  # pipeline-wide commands: verify, pipeline_status, repartition
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's, the health page's) from the web tier itself, with DEBUG off.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # The API's 404 and 405 as JSON with an error, like its other refusals.
    "edge.http.parsing.ApiRefusalsAsJson",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".run" / "static"
# Served by whitenoise from STATIC_ROOT (manage.py collectstatic; make web runs it); outside
# production also straight from the apps' static folders, so nothing needs collecting first.
WHITENOISE_USE_FINDERS = not IS_PRODUCTION
# Until collectstatic first runs, STATIC_ROOT does not exist; the finders serve meanwhile.
warnings.filterwarnings("ignore", message=r"No directory at: .*[/\\]\.run[/\\]static")

# Behind a proxy that terminates TLS: the header it sets and its value for HTTPS, e.g.
# "HTTP_X_FORWARDED_PROTO=https", so that SECURE_SSL_REDIRECT sees the request as secure
# instead of redirecting it forever. Set it only behind a proxy that always sets (or strips)
# the header: a client could otherwise claim HTTPS.
_proxy_ssl_header = env_str("DJANGO_PROXY_SSL_HEADER", "")
if _proxy_ssl_header:
    _header, _, _value = _proxy_ssl_header.partition("=")
    if not _header.startswith("HTTP_") or not _value:
        raise ImproperlyConfigured(
            f"DJANGO_PROXY_SSL_HEADER must look like HTTP_X_FORWARDED_PROTO=https, got {_proxy_ssl_header!r}"
        )
    SECURE_PROXY_SSL_HEADER = (_header, _value)

# Where the admin is served: a path of your own makes it harder to find (e.g. "ops-7f3a/").
ADMIN_URL = env_str("DJANGO_ADMIN_URL", "admin/")
if not ADMIN_URL.endswith("/") or ADMIN_URL.startswith("/"):
    raise ImproperlyConfigured(f"DJANGO_ADMIN_URL must look like 'admin/' (no leading /), got {ADMIN_URL!r}")

# GET /metrics: with a token, scrapers must send "Authorization: Bearer <token>" (401 otherwise);
# without one, only loopback clients (127.0.0.0/8, ::1) are answered (403 otherwise). Behind a
# reverse proxy on the same host every request looks local: set a token there.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# What the names of /metrics start with (the library's default is "reliability").
METRICS_PREFIX = "beans"
# Collectors of domain figures for /metrics: dotted paths to classes with collect().
METRICS_COLLECTORS = ["trades.metrics.TradesCollector"]

# The HTTP API (edge/http/security.py): requests a second per API key unless the key sets its own
# (api_keys create --rate-limit), counted in Redis; while Redis is unreachable nothing is limited.
API_RATE_LIMIT_PER_S = env_int("API_RATE_LIMIT_PER_S", 100)
API_RATE_LIMIT_REDIS_URL = env_str("API_RATE_LIMIT_REDIS_URL", "redis://127.0.0.1:6379/2")
API_RATE_LIMIT_REDIS_TIMEOUT_S = env_float("API_RATE_LIMIT_REDIS_TIMEOUT_S", 0.25)
# How long a web process trusts an API key it has read (0: read it on every request). A key revoked
# by `api_keys revoke` or the admin is refused by every other process within this many seconds.
API_KEY_CACHE_S = env_float("API_KEY_CACHE_S", 5.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

if IS_PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

TEST_RUNNER = "tests.runner.PipelineTestRunner"
