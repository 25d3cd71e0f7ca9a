"""Helpers for the tests: real agents, sshd, Ray and cgroups (see ``tests/conftest.py``)."""
