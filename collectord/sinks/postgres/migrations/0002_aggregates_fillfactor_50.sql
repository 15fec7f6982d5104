-- collectord schema, version 2: room for in-place rewrites of open windows.
--
-- An open 1m window is rewritten at every flush (six times a minute with a 10 s interval).
-- An update is HOT (heap-only: no index entry, not in the primary key, the GIN index on tags
-- or the retention index) only when the new row version fits on the same page. With
-- fillfactor 70, about 30% of the rewrites of a 100,000-series flush found no room and went
-- through all three indexes; with 50, 97% are HOT (benchmarks/README.md, PostgreSQL section).
-- The setting applies to pages filled from now on: new windows' rows (every minute's) get it
-- at once; older pages keep theirs until rewritten (VACUUM FULL or CLUSTER, if ever wanted).
ALTER TABLE metrics_aggregated SET (fillfactor = 50);
