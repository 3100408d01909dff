"""Health checks of real servers, as keepalived's checkers do for IPVS.

``model`` is the operator's intent (checks and per-service policies, part of the
``Config``), ``state`` the pure rise/fall machine, ``effective`` the pure overlay of
health on intent (the table the core is given), ``rules`` the ``# director-check``
lines of the rules file and the operations on checks.  ``checkers``, ``synprobe`` and
``runner`` are the shell: they run the checks in a thread of their own, off the packet
path, and hand results to the daemon's loop.  ``manager`` is what the daemon holds.
"""
