"""The PostgreSQL sequence behind RELIABILITY_ID_GENERATOR = "database" (reliability/ids.py).

No model uses it, so it lives outside the model state: a plain RunSQL, reversible.
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("reliability", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql="CREATE SEQUENCE IF NOT EXISTS reliability_message_id_seq AS bigint START WITH 1",
            reverse_sql="DROP SEQUENCE IF EXISTS reliability_message_id_seq",
        ),
    ]
