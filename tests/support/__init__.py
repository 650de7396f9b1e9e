"""Helpers shared by the test modules: servers, clients, browsers, coturn, fleet nodes, stubs.

Test modules (tests/test_*.py) import shared code from here and never from one
another (tests/test_tests_layout.py checks that); shared fixtures are defined
here and registered in tests/conftest.py.
"""
