-- The audit log's hash chain (src/core/audit_chain.rs): each row's hash covers its content, its id
-- and the hash of the row before it. Rows are inserted unsealed (both NULL) in the batch of the
-- write they record, and sealed in id order shortly after; the rows already here are sealed by
-- the first pass.
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;

-- The sealed rows' ids: the chain's tip (the last sealed row) and "is any row after this one
-- sealed" are index seeks, however many rows wait to be sealed.
CREATE INDEX audit_log_sealed ON audit_log (id) WHERE hash IS NOT NULL;
