"""`codeb workflow init PROJECT`: a GitHub Actions workflow that builds and pushes
`{registry}/{project}:{sha}` and asks `codeb serve` to deploy it."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import click

from codeb_tui.cli.app import codeb, command, session
from codeb_tui.domain.errors import BadInput
from codeb_tui.domain.model import validate_project_name

DEFAULT_OUTPUT = ".github/workflows/codeb-deploy.yml"
# What goes into the workflow is checked strictly: it lands in YAML and in a shell script.
_REGISTRY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$")
_API_URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")

TEMPLATE = """\
# Written by `codeb workflow init @PROJECT@`. On a push to main: build the image, push it as
# @REGISTRY@/@PROJECT@:<commit sha>, and ask codeb to deploy it into the idle slot. The answer
# carries the preview URL (also in the job summary); promote after checking it:
#   codeb promote @PROJECT@      (or the API: {"tool": "promote", ...})
# Needs the repository secret CODEB_API_KEY: codeb apikey create --team TEAM --role member
name: codeb deploy @PROJECT@

on:
  push:
    branches: [main]
  workflow_dispatch: {}

jobs:
  deploy:
    runs-on: [self-hosted, docker]
    env:
      REGISTRY: "@REGISTRY@"
      PROJECT: "@PROJECT@"
      CODEB_API_URL: "@API_URL@"
    steps:
      - name: Checkout
        uses: actions/checkout@v4

      - name: Set up Docker Buildx
        uses: docker/setup-buildx-action@v3
        with:
          # A private registry over plain HTTP, as on a self-hosted network.
          buildkitd-config-inline: |
            [registry."@REGISTRY@"]
              http = true
              insecure = true

      - name: Build and push
        run: |
          docker buildx build \\
            --cache-from "type=registry,ref=${REGISTRY}/${PROJECT}:buildcache" \\
            --cache-to "type=registry,ref=${REGISTRY}/${PROJECT}:buildcache,mode=max" \\
            -t "${REGISTRY}/${PROJECT}:${{ github.sha }}" \\
            --push .

      - name: Deploy with codeb
        env:
          IMAGE: ${{ env.REGISTRY }}/${{ env.PROJECT }}:${{ github.sha }}
          CODEB_API_KEY: ${{ secrets.CODEB_API_KEY }}
        run: |
          answer=$(curl --fail-with-body -sS -X POST "${CODEB_API_URL}/api/tool" \\
            -H 'Content-Type: application/json' \\
            -H "X-API-Key: ${{ secrets.CODEB_API_KEY }}" \\
            -d "{\\"tool\\": \\"deploy\\", \\"params\\": {\\"projectName\\": \\"${PROJECT}\\", \\"image\\": \\"${IMAGE}\\"}}") || {
            echo "codeb deploy failed: ${answer}" >&2
            exit 1
          }
          echo "${answer}"
          preview=$(printf '%s' "${answer}" | sed -n 's/.*"previewUrl": *"\\([^"]*\\)".*/\\1/p')
          echo "Preview of ${IMAGE}: ${preview}" >> "${GITHUB_STEP_SUMMARY}"
"""


def render_workflow(project: str, registry: str, api_url: str) -> str:
    validate_project_name(project)
    if not _REGISTRY_RE.fullmatch(registry):
        raise BadInput(f"--registry: expected HOST:PORT such as 127.0.0.1:5000, got {registry!r}")
    if not _API_URL_RE.fullmatch(api_url):
        raise BadInput(f"--api-url: expected an http(s) URL such as https://api.example.com, got "
                       f"{api_url!r}")
    return (TEMPLATE.replace("@PROJECT@", project).replace("@REGISTRY@", registry)
            .replace("@API_URL@", api_url.rstrip("/")))


@codeb.group(help="GitHub Actions workflows that deploy through `codeb serve`")
def workflow() -> None:
    pass


@command(workflow, "init", "write a GitHub Actions workflow that builds, pushes and deploys",
         "Write a GitHub Actions workflow for PROJECT: checkout, docker buildx build with a "
         "registry cache, push REGISTRY/PROJECT:<sha>, then POST /api/tool to deploy it. "
         "An existing file is kept unless --force.")
@click.argument("project")
@click.option("--registry", metavar="HOST:PORT",
              help="image registry (default: the host of docker.registry_url)")
@click.option("--api-url", metavar="URL", help="the codeb API (default: api.public_url, else "
                                               "http://api.listen)")
@click.option("--output", metavar="PATH", default=DEFAULT_OUTPUT, show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(project: str, registry: str | None, api_url: str | None, output: str,
         force: bool) -> int:
    config = session().config
    if registry is None:
        registry = urlsplit(config.docker.registry_url or "").netloc or "127.0.0.1:5000"
    api_url = api_url or config.api.url
    text = render_workflow(project, registry, api_url)
    path = Path(output)
    if path.exists() and not force:
        raise BadInput(f"{path} exists: not overwritten (--force replaces it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {path}: pushes {registry}/{project}:<sha>, deploys through {api_url}")
    return 0
