"""``python -m director.lab up|down|demo`` (the same as ``dirctl lab ...``)."""

from director.lab.lab import lab_app

lab_app(prog_name="director.lab")
