"""The engine is usable without the console: importing it must not pull in textual.

rich is not checked here: httpx imports it for its own command line whenever it is installed.
That the core never imports rich itself is the import-linter contract in pyproject.toml."""

import subprocess
import sys

import pytest

CORE_MODULES = [
    "codeb_tui.engine.facade",
    "codeb_tui.domain.model",
    "codeb_tui.domain.ports",
    "codeb_tui.domain.proxy",
    "codeb_tui.registry.files",
    "codeb_tui.store",
    "codeb_tui.infra.host",
    "codeb_tui.domain.config",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_does_not_import_the_console(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual' "
        "or m.startswith('codeb_tui.tui'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
