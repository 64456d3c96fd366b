import jax
import pytest


@pytest.fixture
def x64() -> bool:
    """True when the suite runs with JAX_ENABLE_X64=1."""
    return bool(jax.config.jax_enable_x64)
