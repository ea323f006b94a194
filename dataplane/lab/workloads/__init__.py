"""Reference workloads the lab runs inside pods: real processes, stdlib only, quick to start.

They import nothing beyond the standard library so a pod starts in tens of milliseconds.
"""
