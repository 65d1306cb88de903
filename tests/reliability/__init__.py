"""Tests of the library, laid out like ``reliability/``: its settings and checks, the wheel, the
wire format, the admin, counters, deadlines and the worker here; each side of the flow in its own
package (``produce``, ``consume``, ``ops``, ``ids``).
"""
