-- The policy server's denials and rate limits per edge minute, kept apart from the counts of
-- spans and metrics like those (the higher stands; see ARCHITECTURE.md). Rows written before this
-- migration have none.
ALTER TABLE edge_minutes ADD COLUMN policy_counts TEXT NOT NULL DEFAULT '';
