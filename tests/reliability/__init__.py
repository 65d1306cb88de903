"""Tests of the library's modules: settings and checks, the wheel, ids, envelopes, streams, the
consumer's single and batch paths, deadlines, degrade mode and health.
"""
