-- Raw messages are compressed with lz4 in their row (storage MAIN, the
-- default toast_tuple_target: a row over ~2 KiB is compressed; out of line
-- only if still over a page). Stored uncompressed (0003), a 4-5 KiB
-- message took a page of its own and its full size in WAL; the test
-- corpus's replies and bounces take 54 % with lz4, their rows 43 % less
-- table and 46 % less WAL, and their insert is cheaper; bytes that do not
-- compress cost about 2 us more each (bench/RESULTS.md, 2026-12-07
-- "PostgreSQL: what makes the tail"). 0001 had turned compression off to
-- avoid pglz's CPU; lz4 is a different trade. A server built without
-- lz4 keeps the uncompressed layout.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE raw_blobs ALTER COLUMN bytes SET STORAGE MAIN;
        ALTER TABLE raw_blobs ALTER COLUMN bytes SET COMPRESSION lz4;
        ALTER TABLE raw_blobs RESET (toast_tuple_target);
    END IF;
END $$;
