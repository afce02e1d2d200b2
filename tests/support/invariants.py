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
