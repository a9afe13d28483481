"""The `world` fixture: a hostile relay on a loopback port in the test's trio loop, and a place for daemons."""

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import trio
from hostile_world import World, start_world


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    world = await start_world(nursery)
    try:
        yield world
    finally:
        await world.finish()
        if not os.environ.get("HOSTILE_KEEP"):
            shutil.rmtree(world.root, ignore_errors=True)
