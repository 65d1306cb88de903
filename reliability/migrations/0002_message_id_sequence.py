from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("reliability", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "CREATE SEQUENCE IF NOT EXISTS reliability_message_id_seq",
            "DROP SEQUENCE IF EXISTS reliability_message_id_seq",
        ),
    ]
