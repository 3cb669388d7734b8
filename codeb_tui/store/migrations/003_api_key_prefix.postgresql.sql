-- 003: an API key is named by its prefix (`codeb apikey revoke PREFIX`), so prefixes are unique;
-- keys are listed per team.

CREATE UNIQUE INDEX api_keys_prefix_key ON api_keys (prefix);

CREATE INDEX api_keys_team_id_idx ON api_keys (team_id);
