"""The placement invariants as SQL, checked by whole-stack tests and the benchmarks alike:
no host over total x ratio - reserved, and each host's usage equal to its allocations."""

OVERCOMMITTED_HOSTS_SQL = """
SELECT count(*) FROM resource_providers
WHERE vcpu_used > vcpu_total * vcpu_ratio - vcpu_reserved
   OR memory_mb_used > memory_mb_total * memory_mb_ratio - memory_mb_reserved
   OR disk_gb_used > disk_gb_total * disk_gb_ratio - disk_gb_reserved"""

USAGE_MISMATCH_SQL = """
SELECT count(*) FROM resource_providers p LEFT JOIN (
  SELECT provider_id, sum(vcpus) v, sum(memory_mb) m, sum(disk_gb) d, count(*) c
  FROM allocations GROUP BY provider_id) a ON a.provider_id = p.id
WHERE p.vcpu_used <> coalesce(a.v, 0) OR p.memory_mb_used <> coalesce(a.m, 0)
   OR p.disk_gb_used <> coalesce(a.d, 0) OR p.allocation_count <> coalesce(a.c, 0)"""

# Allocations whose consumer is neither a live instance nor a move (a migration's uuid holds
# the source host's share while it is open): a claim that was never released.
ORPHANED_ALLOCATIONS_SQL = """
SELECT count(*) FROM allocations a
WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.uuid = a.consumer_id AND NOT i.deleted)
  AND NOT EXISTS (SELECT 1 FROM migrations m WHERE m.uuid = a.consumer_id)"""

# Commands committed but never published: the outbox is empty once Loom is idle.
OUTBOX_ROWS_SQL = "SELECT count(*) FROM outbox"

# Live instances sharing a name within a project (a create handled twice would make two).
DUPLICATED_INSTANCES_SQL = """
SELECT coalesce(sum(n - 1), 0) FROM (
  SELECT count(*) n FROM instances WHERE NOT deleted
  GROUP BY project_id, name HAVING count(*) > 1) d"""
