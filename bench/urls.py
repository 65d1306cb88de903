"""The project's URLs and the alternatives' endpoints under ``/bench/`` (``bench.settings`` only)."""

from django.urls import path

from bench.alternatives.api import api
from project.urls import urlpatterns as project_urlpatterns

urlpatterns = [*project_urlpatterns, path("bench/", api.urls)]
