"""Counters in shards (one row per name and shard), seeded with the message log's figures, and the
recorded queue depths.

``PipelineCounter`` was one row per name; it becomes one row per (name, shard): a new table,
the old rows copied to shard 0, the old table dropped and the new one given its name. The
message log's counters start from the rows there now (``message_log_inserted`` and
``message_log_redeliveries``; nothing purged yet). Rows that workers of the previous version
insert after this runs are not counted: stop them first, or run ``manage.py message_log_recount``
once they are gone.
"""

import django.utils.timezone
from django.db import migrations, models

SEED = (
    "INSERT INTO reliability_pipelinecountershard (name, shard, value, updated_at) "
    "SELECT v.name, 0, v.amount, now() "
    "FROM (SELECT count(*) AS n, coalesce(sum(redeliveries), 0) AS r FROM reliability_messagelog) AS t, "
    "LATERAL (VALUES ('message_log_inserted', t.n), ('message_log_redeliveries', t.r)) AS v(name, amount) "
    "WHERE v.amount > 0"
)
MESSAGE_LOG_COUNTERS = [
    "message_log_inserted",
    "message_log_purged",
    "message_log_redeliveries",
    "message_log_redeliveries_purged",
]


def counters_copy_and_seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    alias = schema_editor.connection.alias
    old = apps.get_model("reliability", "PipelineCounter")
    new = apps.get_model("reliability", "PipelineCounterShard")
    new.objects.using(alias).bulk_create(
        [
            new(name=row.name, shard=0, value=row.value, updated_at=row.updated_at)
            for row in old.objects.using(alias)
        ]
    )
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("LOCK TABLE reliability_messagelog IN SHARE MODE")
        cursor.execute(SEED)


def counters_copy_back(apps, schema_editor):  # type: ignore[no-untyped-def]
    alias = schema_editor.connection.alias
    old = apps.get_model("reliability", "PipelineCounter")
    new = apps.get_model("reliability", "PipelineCounterShard")
    totals: dict[str, tuple[int, object]] = {}
    for row in new.objects.using(alias).exclude(name__in=MESSAGE_LOG_COUNTERS):
        value, updated_at = totals.get(row.name, (0, row.updated_at))
        totals[row.name] = (value + row.value, max(updated_at, row.updated_at))
    old.objects.using(alias).bulk_create(
        [old(name=name, value=value, updated_at=updated_at) for name, (value, updated_at) in totals.items()]
    )


class Migration(migrations.Migration):
    dependencies = [
        ("reliability", "0008_relay_claims_and_counters"),
    ]

    operations = [
        migrations.CreateModel(
            name="PipelineCounterShard",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100)),
                ("shard", models.PositiveSmallIntegerField(default=0)),
                ("value", models.BigIntegerField(default=0)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("name", "shard"), name="pipeline_counter_name_shard_unique"
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("value__gte", 0)), name="pipeline_counter_nonnegative"
                    ),
                ],
            },
        ),
        migrations.RunPython(counters_copy_and_seed, counters_copy_back),
        migrations.DeleteModel(name="PipelineCounter"),
        migrations.RenameModel(old_name="PipelineCounterShard", new_name="PipelineCounter"),
        migrations.CreateModel(
            name="QueueDepth",
            fields=[
                ("queue", models.CharField(max_length=200, primary_key=True, serialize=False)),
                ("messages", models.BigIntegerField(blank=True, null=True)),
                ("observed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("messages__isnull", True), ("messages__gte", 0), _connector="OR"),
                        name="queue_depth_messages_nonnegative",
                    ),
                ],
            },
        ),
    ]
