"""LoopLagProbe sees a blocked event loop and reads ~0 on an idle one."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.loop_lag import LoopLagProbe


def test_probe_sees_a_blocked_loop_and_decays_after():
    async def go():
        p = LoopLagProbe(interval_s=0.01)
        p.ensure_started()
        p.ensure_started()  # idempotent: one task
        await asyncio.sleep(0.05)
        idle = p.lag_ms
        time.sleep(0.12)  # a blocking call on the loop: the probe's timer fires ~110 ms late
        await asyncio.sleep(0.02)
        blocked = p.lag_ms
        await asyncio.sleep(0.3)
        after = p.lag_ms
        p.stop()
        return idle, blocked, after, p.max_ms

    idle, blocked, after, peak = asyncio.run(go())
    assert idle < 50
    assert blocked >= 80 and peak >= 80
    assert after < blocked / 4  # decaying maximum: the stall fades within a few intervals


def test_probe_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagProbe(interval_s=0)
