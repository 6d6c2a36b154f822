"""The decisions: pure functions from a workload profile to decisions with numbers and reasons.

- lesson 0, stateful or stateless: `assess`;
- lesson 2, bounded growth and memory: `lifecycle` (a policy for a profile) and `sizing`;
- lesson 3, consistency by kind of state: `consistency`;
- lesson 4, schema changes: `compat` (compatibility and the rollout plan);
- lessons 1 and 5, what the runtime needs for a profile: `resilience`, `observability`.

The profile itself is `profile.WorkloadProfile`. A decision may measure a live server (the
sizing model against `INFO memory`, replica lag), through the runtime below it; it never
imports the workbook.
"""
