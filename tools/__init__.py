"""Maintenance scripts run from the repository root (``python -m tools.NAME``), not part of the
installed package: ``tools.wheelhouse`` (``make wheelhouse``) and ``tools.gpu_check``
(``make gpu-check``). docs/gpu.md says how they are used on a lent GPU machine."""
