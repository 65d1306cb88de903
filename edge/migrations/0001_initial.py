"""ApiKey moves here from the project app: in Django's state only, the table stays ``project_apikey``.

Its content type moves with it (``project.apikey`` becomes ``edge.apikey``, the same row), so
the admin's permissions on API keys and its history of them stay theirs.
"""

import django.contrib.postgres.fields
import django.utils.timezone
from django.db import migrations, models


def content_type_move(apps, schema_editor, *, source="project", target="edge"):
    """Move ApiKey's content type row from ``source`` to ``target``, its permissions and history with it.

    A row already under ``target`` can only be one that ``post_migrate`` made while the model was
    not in that app's state (a migration back, then forward): it is deleted, with the permissions
    made with it, for the row that has the history. A database migrated from scratch has no
    content types yet (``post_migrate`` makes them afterwards): nothing to move.
    """
    ContentType = apps.get_model("contenttypes", "ContentType")
    rows = ContentType.objects.using(schema_editor.connection.alias).filter(model="apikey")
    if rows.filter(app_label=source).exists():
        rows.filter(app_label=target).delete()
        rows.filter(app_label=source).update(app_label=target)
    ContentType.objects.clear_cache()


def content_type_move_back(apps, schema_editor):
    content_type_move(apps, schema_editor, source="edge", target="project")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        # Whatever refers to content types is in the state, so a duplicate row deletes with its rows.
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("project", "0001_api_key"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ApiKey',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(help_text='Who uses the key, e.g. the client application.', max_length=100)),
                        ('prefix', models.CharField(editable=False, max_length=16)),
                        ('digest', models.CharField(editable=False, max_length=64)),
                        ('scopes', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(choices=[('trades:write', 'Place trades'), ('trades:read', 'Read trades'), ('accounts:read', 'Read accounts')], max_length=32), size=None)),
                        ('rate_limit_per_s', models.PositiveIntegerField(default=0)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                        ('revoked_at', models.DateTimeField(blank=True, editable=False, null=True)),
                    ],
                    options={
                        'verbose_name': 'API key',
                        'db_table': 'project_apikey',
                        'constraints': [models.UniqueConstraint(fields=('prefix',), name='api_key_prefix_unique'), models.UniqueConstraint(condition=models.Q(('revoked_at__isnull', True)), fields=('name',), name='api_key_live_name_unique'), models.CheckConstraint(condition=models.Q(('scopes__contained_by', ['trades:write', 'trades:read', 'accounts:read']), models.Q(('scopes', []), _negated=True)), name='api_key_scopes_known')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_move, content_type_move_back),
    ]
