-- 001: the initial schema (SQLite). Timestamps are ISO-8601 UTC text
-- ("2025-01-31T12:00:00.000000Z", fixed width so that text order is time order).
-- schema_migrations itself is created by the store before any migration runs.

CREATE TABLE teams (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    team_id     INTEGER NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    revoked_at  TEXT
);

CREATE TABLE projects (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    team_id     INTEGER REFERENCES teams (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE project_slots (
    project_id        INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    environment       TEXT NOT NULL,
    slot              TEXT NOT NULL,
    state             TEXT NOT NULL,
    port              INTEGER NOT NULL,
    image             TEXT,
    container_id      TEXT,
    deployed_at       TEXT,
    promoted_at       TEXT,
    grace_expires_at  TEXT,
    version           INTEGER NOT NULL DEFAULT 0,
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    UNIQUE (project_id, environment, slot)
);

CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY,
    operation_id  TEXT NOT NULL UNIQUE,
    operation     TEXT NOT NULL,
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    slot          TEXT,
    image         TEXT,
    result        TEXT NOT NULL,
    error         TEXT,
    actor         TEXT NOT NULL DEFAULT '',
    started_at    TEXT NOT NULL,
    finished_at   TEXT NOT NULL
);

CREATE TABLE audit_logs (
    id            INTEGER PRIMARY KEY,
    operation_id  TEXT NOT NULL,
    actor         TEXT NOT NULL,
    team          TEXT,
    action        TEXT NOT NULL,
    project       TEXT,
    environment   TEXT,
    from_state    TEXT,
    to_state      TEXT,
    result        TEXT NOT NULL,
    duration_ms   REAL NOT NULL,
    detail        TEXT NOT NULL DEFAULT '{}',  -- JSON object as text
    log           TEXT NOT NULL DEFAULT '',
    created_at    TEXT NOT NULL
);
