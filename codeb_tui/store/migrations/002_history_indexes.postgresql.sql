-- 002: indexes for the history queries (newest first, filtered by project or action).

CREATE INDEX audit_logs_project_created_at_idx ON audit_logs (project, created_at);

CREATE INDEX audit_logs_action_created_at_idx ON audit_logs (action, created_at);

CREATE INDEX deployments_project_started_at_idx ON deployments (project, started_at);
