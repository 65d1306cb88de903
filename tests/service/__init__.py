"""Tests of the reference service (trades and beans): its services, HTTP API, admin and constraints."""
