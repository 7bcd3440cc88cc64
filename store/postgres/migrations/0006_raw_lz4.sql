-- Raw messages are compressed with lz4 in their row (storage MAIN, the
-- default toast_tuple_target: a row over ~2 KiB is compressed; out of line
-- only if still over a page). Stored uncompressed (0003), a 4-5 KiB
-- message took a page of its own and its full size in WAL; the test
-- corpus's replies and bounces take 54 % with lz4, so the table grows by
-- 43 % less and each message writes 46 % less WAL, and the insert is
-- cheaper (measured in bench/RESULTS.md, 2026-12-07 "PostgreSQL: the
-- tail"). lz4 costs microseconds per message, also on bytes that do not
-- compress (pglz, the only other method, is what 0001 avoided: ten times
-- slower). A server built without lz4 keeps the uncompressed layout.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE raw_blobs ALTER COLUMN bytes SET STORAGE MAIN;
        ALTER TABLE raw_blobs ALTER COLUMN bytes SET COMPRESSION lz4;
        ALTER TABLE raw_blobs RESET (toast_tuple_target);
    END IF;
END $$;
