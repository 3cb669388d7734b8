-- 004: history writes are idempotent by operation id, so that a write retried after a lost
-- answer, or replayed from the journal, leaves one row (the writes use ON CONFLICT DO NOTHING).
-- deployments.operation_id is unique since 001; an operation writes one audit row per action.

-- Rows an operation wrote twice before this migration: the first one stays.
DELETE FROM audit_logs
WHERE id NOT IN (SELECT MIN(id) FROM audit_logs GROUP BY operation_id, action);

CREATE UNIQUE INDEX audit_logs_operation_id_action_key ON audit_logs (operation_id, action);
