from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project itself as an app: pipeline-wide commands (verify, pipeline_status, repartition)
    that read both services and the reliability tables, which neither service may do."""

    name = "project"
    verbose_name = "Pipeline"
