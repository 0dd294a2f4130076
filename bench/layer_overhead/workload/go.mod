module nexus-nested-vm/bench/workload

go 1.19
