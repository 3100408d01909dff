"""Health checks of real servers, as keepalived's checkers do for IPVS: the runtime.

The intent (checks and per-service policies, part of the ``Config``) is
``director.model.health``; the commands on it and its rules-file lines are the control
plane's (``director.ctl.health_ops``, ``director.ctl.health_rules``).  Here: ``state``
is the pure rise/fall machine, ``effective`` the pure overlay of health on intent (the
table the core is given); ``checkers``, ``synprobe`` and ``runner`` run the checks in a
thread of their own, off the packet path, and hand results to the daemon's loop;
``manager`` is what the daemon holds.
"""
