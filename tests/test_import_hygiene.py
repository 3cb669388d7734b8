"""The engine is usable without the console: importing it must not pull in textual.

rich is not checked for the core: httpx imports it for its own command line whenever it is
installed.
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


# What a `codeb` command may not load before it asks for it: the Docker SDK and httpx are
# imported when Docker, Caddy or the image registry is first asked (infra/), the databases'
# drivers when the store opens, the console and the API server by the commands that start them,
# rich when a table is printed. `codeb --help` pays for none of them.
CLI_UNUSED = ["docker", "httpx", "rich", "textual", "uvicorn", "starlette", "asyncpg", "aiosqlite"]


@pytest.mark.parametrize("code", [
    "import codeb_tui.cli",
    "import contextlib, io, codeb_tui.cli\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    assert codeb_tui.cli.main(['--help']) == 0",
], ids=["import", "help"])
def test_cli_imports_only_what_it_uses(code):
    check = (
        f"{code}\n"
        "import sys\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({CLI_UNUSED!r}))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`codeb` loads {out.stdout.strip()} before it needs them"
