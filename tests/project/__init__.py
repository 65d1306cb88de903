"""Tests of the project around the apps: settings and security, the admin site, the web tier,
database roles, a fresh machine, the demo, deployment, migrations and the example on the wheel.
"""
