"""Roles: asyncio coroutines that wire the bus to the math."""
