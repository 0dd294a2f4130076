"""The layer-overhead benchmark: the same workloads on the host and in every layer of a lab.

    scripts/bench-layers [stack] [--quick] [--repeats N]

Pure parts (no Pulumi import, unit-tested): `results` (the workloads, parsing the
program's JSON, statistics), `render` (table, JSON, SVG chart), `lab` (reading a stack's
deployment). `layers` is the seam where each layer says how to run a command there,
its accelerator and whether it is up; `program` builds the Go workload program in
`workload/`; `run` puts them together; `__main__` is the command line.
"""
