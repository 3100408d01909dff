"""The NAT lab: network namespaces per SPEC §3 for demos, tests and benchmarks.

Nothing here touches the root namespace: every host is a namespace that the lab
creates, and every veth pair is made directly inside the namespaces.
"""
