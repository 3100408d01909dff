"""The real-server side of VS/DR and VS/TUN: ``dirctl realserver up|down|status``.

``plan`` decides what to change (pure), ``host`` reads and changes the host (netlink,
/proc/sys, the decapsulator process), ``ipip`` and ``decap`` are the userspace IPIP
decapsulator for kernels without the ``ipip`` module, and ``cli`` is the typer
sub-app hung on ``dirctl``.
"""
