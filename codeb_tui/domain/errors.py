"""Errors that cross the core's boundary. Each carries the exit code the CLI uses: 0 done, 1 failed,
2 bad input or refused (README, "Exit codes")."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2


class CodebError(Exception):
    """Base class: `str(error)` is the one line an operator sees."""

    exit_code = EXIT_FAILED


class BadInput(CodebError):
    """Input that is refused before anything is touched (names, references, config)."""

    exit_code = EXIT_REFUSED


class ConfigError(BadInput):
    pass


class TransitionRefused(CodebError):
    """A state transition the slot machine does not allow ("Run deploy first", "No grace slot")."""

    exit_code = EXIT_REFUSED


class LockHeld(CodebError):
    """Another codeb process holds the project+environment lock."""

    exit_code = EXIT_REFUSED


class RegistryCorrupt(CodebError):
    """A registry file that cannot be read as what it should be. Never overwritten silently."""

    exit_code = EXIT_FAILED


class PortRangeFull(CodebError):
    exit_code = EXIT_FAILED


class OperationFailed(CodebError):
    """A step of an operation failed against the world (pull, health, proxy)."""

    exit_code = EXIT_FAILED


class ImageNotFound(OperationFailed):
    pass


class HealthCheckFailed(OperationFailed):
    pass


class ProxyApplyFailed(OperationFailed):
    pass


class AccessDenied(CodebError):
    """An API key that is missing, unknown, revoked or whose role does not allow the action
    (codeb_tui.domain.access). The message always starts with "Access Denied:"."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, principal: object | None = None) -> None:
        if not message.startswith("Access Denied:"):
            message = f"Access Denied: {message}"
        self.principal = principal
        """The key's Principal when the key is valid but its role falls short (for the audit)."""
        super().__init__(message)


class HostUnreachable(OperationFailed):
    """A host reached over SSH did not answer (refused, timed out, dropped): the message names
    the host and the reason."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        super().__init__(f"Host {host} unreachable: {reason}")


class HostKeyRefused(OperationFailed):
    """A host's SSH key is not the one known_hosts records (unknown or changed): the connection
    is refused; the message names the host and both fingerprints."""

    def __init__(self, host: str, message: str, offered: str | None = None) -> None:
        self.host = host
        self.offered = offered
        """The fingerprint the host offered (SHA256:...), when it could be read."""
        super().__init__(message)
