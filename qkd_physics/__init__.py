"""The QKD link physics shared by the levels, a library like the engine that imports no level:
`model`, a link's key rate and QBER from its optical loss (the QKD nodes' readings, and the
planner's estimate of a link it would build); `reach`, the optical routes a fibre plant offers
between QKD interfaces (what the planner and plan-path may build)."""
from qkd_physics.model import (AUTHENTICATION_SHARE, DEFAULT_QBER_THRESHOLD, DeviceProfile, binary_entropy,
                               effective_key_rate, expected_eskr, link_performance)

__all__ = ["AUTHENTICATION_SHARE", "DEFAULT_QBER_THRESHOLD", "DeviceProfile", "binary_entropy",
           "effective_key_rate", "expected_eskr", "link_performance"]
