"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from engine import create_app
from engine.app import ENGINE

from .helpers import make_config


@pytest.fixture
async def gateway(aiohttp_client):
    """``await gateway(provider=None, **config)``: a test client of a new app, its engine
    as ``client.engine``, ``provider`` (if given) serving as ``mock``."""

    async def make(provider=None, **config):
        app = create_app(make_config(**config))
        if provider is not None:
            app[ENGINE].add_provider(provider, "mock")
        client = await aiohttp_client(app)
        client.engine = app[ENGINE]
        return client

    return make
