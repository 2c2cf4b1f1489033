-- import_running fails the transaction (SQLSTATE TL002) unless import p_id
-- is still running, and locks its row until the transaction ends: every
-- batch an import commits and its end call it first, so that a process
-- coming back to an import that importer.ReapStale failed meanwhile
-- commits nothing more of it. The lock orders the reaper after a batch
-- under way, whose progress makes the import alive again.
CREATE FUNCTION import_running(p_id text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM imports WHERE id = p_id AND status = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'import % is no longer running', p_id USING ERRCODE = 'TL002';
    END IF;
END
$$;

CREATE INDEX imports_running ON imports (updated_at) WHERE status = 'running';

---- create above / drop below ----

DROP INDEX imports_running;
DROP FUNCTION import_running(text);
