"""Benchmarks: each prints figures measured side by side in one run, never asserts."""

import os


def need_services() -> None:
    """Every bench that meets Docker needs the environment of scripts/services.sh."""
    if "DOCKER_HOST" not in os.environ:
        raise SystemExit("DOCKER_HOST is not set: source the env file of scripts/services.sh")
