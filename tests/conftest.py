"""Shared fixtures: real servers, started by the tests themselves, on free ports, in temp dirs."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.llm",
    "tests.fixtures.s3",
    "tests.fixtures.hub",
    "tests.fixtures.docker",
    "tests.fixtures.runner",
]
