"""ApiKey now belongs to the edge app (edge.0001): removed from this app's state only, its table stays."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("edge", "0001_initial"),
        ("project", "0001_api_key"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiKey")],
            database_operations=[],
        ),
    ]
