"""The worker's tests use the service fixtures (a tiny model, a small library, a temporary data dir)."""

from tests.app.conftest import service_settings, tiny_library_db, tiny_model_dir  # noqa: F401
