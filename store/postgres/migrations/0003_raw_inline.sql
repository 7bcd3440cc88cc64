-- A message of a few KiB was moved out of line into raw_blobs' TOAST
-- table in ~2 KiB chunks (PostgreSQL toasts rows over ~2 KiB): three TOAST
-- rows and three TOAST index entries per 4 KiB message. Up to a page, the
-- bytes now stay in the row itself (storage EXTERNAL: never compressed);
-- larger messages are toasted as before.
ALTER TABLE raw_blobs SET (toast_tuple_target = 8160);
