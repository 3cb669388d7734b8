"""The HTTP API that CI calls (`codeb serve`): a Starlette app over the engine facade, served by
uvicorn in the engine's event loop.

    app.py         routes and the route table      tools.py       each tool as a facade call
    models.py      request and answer models       errors.py      engine errors -> statuses
    operations.py  operations run to their end     limits.py      rate, body size and time
    openapi.py     the generated OpenAPI document  server.py      uvicorn, timeouts, signals
"""

# Nothing is imported here: the CLI uses models.py alone and must not load Starlette for it.
