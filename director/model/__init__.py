"""The operator's intent, as plain immutable data: the leaf every other package stands on.

``config`` holds the virtual services, their real servers, timeouts and ``ConfigError``
(what ipvsadm's ``-A/-a/--set`` edit); ``health`` holds the health-check intent that
keepalived's ``real_server`` blocks carry.  Nothing here imports the rest of director,
does I/O or knows of packets: the core, the control plane and the runtimes all read it.
"""
